//! The console's device search and the dashboard's fleet counts on
//! PostgreSQL, in SQL over the key columns of schema version 7
//! (`devices.host_lc / os_lc / status_rank / cpu_key`, `sites.name_lc`,
//! `alerts.device`), with the same answers and the same cursor format as
//! the RocksDB backend's in-memory [`crate::fleet_index::FleetIndex`]
//! (the tests run on both backends). No per-request index build.
//! Schema version 9 adds the per-site counts (`site_counts`, recounted by
//! the apply transaction: [`recount_site`]) that the dashboard and most
//! search totals read, and the indexes of the filters and sorts; a
//! search's `total` is exact up to [`TOTAL_CAP`], then "more than".
//!
//! Owns only these two queries, the per-site recount, and the start-up
//! fill of the key columns (rows before version 7) and of the counts
//! (before version 9); the keys themselves are defined in
//! [`crate::fleet_index::search_keys`] (shared), never here.

use std::collections::BTreeMap;

use outpost_proto::{CustomerId, SiteId};
use tokio_postgres::types::ToSql;

use super::{Client, PgCentralStore, be, dec, i, u};
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

    /// A store whose searches count `total` up to `cap` matches (tests;
    /// the default is [`TOTAL_CAP`]).
    pub fn with_search_total_cap(mut self, cap: u64) -> Self {
        self.total_cap = cap.max(1);
        self
    }

    /// Fills `site_counts` for sites without a row (a database written
    /// before version 9; owner role, at start). A concurrent apply's row
    /// wins (`DO NOTHING`; the apply recounts under the site's lock).
    pub(super) async fn fill_site_counts(&self) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            &format!(
                "INSERT INTO site_counts ({COUNTS_COLUMNS}) {} ON CONFLICT DO NOTHING",
                counts_select(
                    "NOT EXISTS (SELECT 1 FROM site_counts c \
                     WHERE c.tenant_id = s.tenant_id AND c.site_id = s.site_id)"
                )
            ),
            &[],
        )
        .await
        .map_err(be)?;
        Ok(())
    }

    /// The SQL of a search's page and its parameters. `plan` says how
    /// the page is chosen (see [`PagePlan`]).
    fn page_sql(
        tenant: &str,
        q: &DeviceSearch,
        cursor: Option<&Cursor>,
        plan: &PagePlan,
    ) -> (String, Params) {
        let mut ps = Params::default();
        let (t, mut filter) = device_filter(&mut ps, tenant, q);
        if let PagePlan::Among(sites, devices) = plan {
            filter += &format!(
                " AND (d.site_id, d.device) IN (SELECT * FROM unnest({}::text[], {}::text[]))",
                ps.p(sites.clone()),
                ps.p(devices.clone())
            );
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
        if let Some(c) = cursor {
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
        // Sites are joined only when the sort needs their name.
        let join_sites = text.contains("s.") || text2.contains("s.");
        let sites = if join_sites {
            " LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id"
        } else {
            ""
        };
        // The page is chosen over the key columns only; bodies, site
        // names and alert counts are read for its rows alone. Few matches:
        // all of them first (a materialised CTE), then sorted; many: the
        // planner's choice (an index in the page's order, read up to the
        // limit).
        let keys = format!(
            "SELECT d.site_id, d.device, {num} AS k_num, {text}::text AS k_text, \
             {text2}::text AS k_text2, d.host_lc FROM devices d{sites} WHERE {page_filter}"
        );
        let chosen = match plan {
            PagePlan::Ordered | PagePlan::Dense => {
                format!("p AS ({keys} ORDER BY {} LIMIT {lim})", order.join(", "))
            }
            PagePlan::MatchFirst | PagePlan::Among(..) => format!(
                "m AS MATERIALIZED ({keys}), p AS (SELECT * FROM m ORDER BY {} LIMIT {lim})",
                outer.join(", ").replace("p.", "m.")
            ),
        };
        let page_sql = format!(
            "WITH {chosen} \
             SELECT d.body, d.ips, d.tags, COALESCE(s.name, d.site_id), \
             (SELECT count(*) FROM alerts a WHERE a.tenant_id = d.tenant_id AND a.site_id = d.site_id \
              AND a.device = d.device AND a.state IN ('pending', 'firing')), \
             EXISTS (SELECT 1 FROM alerts a WHERE a.tenant_id = d.tenant_id AND a.site_id = d.site_id \
              AND a.device = d.device AND a.state = 'firing' AND a.severity = 'critical'), \
             p.k_num, p.k_text, p.k_text2, p.host_lc \
             FROM p JOIN devices d ON d.tenant_id = {t} AND d.site_id = p.site_id AND d.device = p.device \
             LEFT JOIN sites s ON s.tenant_id = d.tenant_id AND s.site_id = d.site_id \
             ORDER BY {}",
            outer.join(", ")
        );
        (page_sql, ps)
    }

    /// The query of a search's `total`: a sum of per-site counts when
    /// they answer it (no word, no tag, not status and critical at once:
    /// exact, ~1 row per site), else a count of the matches that stops
    /// after `total_cap + 1`.
    fn count_sql(&self, tenant: &str, q: &DeviceSearch) -> (String, Params, TotalKind) {
        let mut ps = Params::default();
        let per_site = q.words.is_empty() && q.tag.is_none() && !(q.critical && q.status.is_some());
        if per_site {
            let column = if q.critical {
                "critical"
            } else {
                match q.status {
                    None => "devices",
                    Some(DeviceStatus::Online) => "online",
                    Some(DeviceStatus::Offline) => "offline",
                    Some(DeviceStatus::Pending) => "pending",
                    Some(DeviceStatus::Revoked) => "revoked",
                }
            };
            let mut filter = format!("c.tenant_id = {}", ps.p(tenant.to_string()));
            if let Some(s) = &q.site_id {
                filter += &format!(" AND c.site_id = {}", ps.p(s.to_string()));
            }
            if let Some(cu) = &q.customer {
                filter += &format!(" AND c.customer = {}", ps.p(cu.to_string()));
            }
            if !q.customers_allowed.is_empty() {
                let allowed: Vec<String> =
                    q.customers_allowed.iter().map(|c| c.to_string()).collect();
                filter += &format!(" AND c.customer = ANY({})", ps.p(allowed));
            }
            let sql = format!(
                "SELECT COALESCE(sum(c.{column}), 0)::bigint FROM site_counts c WHERE {filter}"
            );
            (sql, ps, TotalKind::Exact)
        } else {
            let (_, filter) = device_filter(&mut ps, tenant, q);
            let cap = ps.p(i(self.total_cap.saturating_add(1)));
            let sql = format!(
                "SELECT count(*) FROM (SELECT 1 FROM devices d WHERE {filter} LIMIT {cap}) m"
            );
            (sql, ps, TotalKind::UpTo(self.total_cap))
        }
    }

    /// A search's `total`, whether more match, and how to choose its page.
    ///
    /// A word or tag search first reads the ids of its matches (up to the
    /// cap + 1) **as the owner role**, with the explicit tenant filter:
    /// under row-level security PostgreSQL may not use an index for an
    /// operator that is not leakproof (`LIKE`, `@>`), so the trigram and
    /// tag indexes would go unused (a scan of the tenant's devices).
    /// Only ids leave this query; the page itself is read under the
    /// tenant's policy like every other row. Other searches count in the
    /// tenant's transaction (per-site counts, else a capped count).
    async fn plan_search(
        &self,
        c: &mut Client,
        tenant: &str,
        q: &DeviceSearch,
    ) -> Result<(u64, bool, PagePlan)> {
        let cap = self.total_cap;
        if !q.words.is_empty() || q.tag.is_some() {
            let mut ps = Params::default();
            let (_, filter) = device_filter(&mut ps, tenant, q);
            let lim = ps.p(i(cap.saturating_add(1)));
            let rows = c
                .query(
                    &format!(
                        "SELECT d.site_id, d.device FROM devices d WHERE {filter} LIMIT {lim}"
                    ),
                    &ps.refs(),
                )
                .await
                .map_err(be)?;
            if rows.len() as u64 > cap {
                return Ok((cap, true, PagePlan::Dense));
            }
            let (sites, devices): (Vec<String>, Vec<String>) =
                rows.iter().map(|r| (r.get(0), r.get(1))).unzip();
            return Ok((sites.len() as u64, false, PagePlan::Among(sites, devices)));
        }
        let (sql, ps, kind) = self.count_sql(tenant, q);
        let tx = Self::tenant_tx(c, tenant).await?;
        let counted = u(tx
            .query_one(&sql, &ps.refs())
            .await
            .map_err(be)?
            .get::<_, i64>(0));
        tx.commit().await.map_err(be)?;
        let (total, more) = match kind {
            TotalKind::UpTo(cap) if counted > cap => (cap, true),
            _ => (counted, false),
        };
        let plan = match kind {
            _ if !more && total <= MATCH_FIRST => PagePlan::MatchFirst,
            TotalKind::UpTo(_) => PagePlan::Dense,
            TotalKind::Exact => PagePlan::Ordered,
        };
        Ok((total, more, plan))
    }

    /// `EXPLAIN (ANALYZE, BUFFERS)` of a search's page query, as the API
    /// role of `tenant` runs it, after its plan (the fleet bench prints it).
    #[cfg(test)]
    pub(crate) async fn explain_search(&self, tenant: &str, q: &DeviceSearch) -> Result<String> {
        let cursor =
            Cursor::decode(q).map_err(|e| CentralStoreError::InvalidCursor(e.to_string()))?;
        let mut c = self.client().await?;
        let t0 = std::time::Instant::now();
        let (total, more, plan) = self.plan_search(&mut c, tenant, q).await?;
        let mut out = format!(
            "total {total} more {more} plan {} in {:.2} ms\n",
            match plan {
                PagePlan::Ordered => "ordered",
                PagePlan::Dense => "dense",
                PagePlan::MatchFirst => "match-first",
                PagePlan::Among(..) => "among-ids",
            },
            t0.elapsed().as_secs_f64() * 1000.0
        );
        let (page_sql, ps) = Self::page_sql(tenant, q, cursor.as_ref(), &plan);
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        plan.prepare(&tx).await?;
        let rows = tx
            .query(
                &format!("EXPLAIN (ANALYZE, BUFFERS) {page_sql}"),
                &ps.refs(),
            )
            .await
            .map_err(be)?;
        for r in rows {
            out += r.get::<_, &str>(0);
            out.push('\n');
        }
        tx.commit().await.map_err(be)?;
        Ok(out)
    }

    pub(super) async fn search_devices_sql(
        &self,
        tenant: &str,
        q: &DeviceSearch,
    ) -> Result<SearchPage> {
        let cursor =
            Cursor::decode(q).map_err(|e| CentralStoreError::InvalidCursor(e.to_string()))?;
        let mut c = self.client().await?;
        let (total, total_more, plan) = self.plan_search(&mut c, tenant, q).await?;
        let (page_sql, ps) = Self::page_sql(tenant, q, cursor.as_ref(), &plan);
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        plan.prepare(&tx).await?;
        let rows = tx.query(&page_sql, &ps.refs()).await.map_err(be)?;
        tx.commit().await.map_err(be)?;
        let limit = q.limit.max(1);
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
            total,
            total_more,
            next: if more { last.map(|c| c.encode()) } else { None },
        })
    }

    /// The dashboard's counts: the `site_counts` rows of the sites the
    /// caller sees (kept by the apply transaction, see V9).
    pub(super) async fn fleet_counts_sql(
        &self,
        tenant: &str,
        allowed: &[CustomerId],
    ) -> Result<FleetCounts> {
        let allowed: Vec<&str> = allowed.iter().map(|c| c.as_str()).collect();
        let mut c = self.client().await?;
        let tx = Self::tenant_tx(&mut c, tenant).await?;
        let rows = tx
            .query(
                "SELECT site_id, devices, online, offline, pending, revoked, critical, \
                   alerts_pending, firing_info, firing_warning, firing_critical \
                 FROM site_counts \
                 WHERE tenant_id = $1 AND (cardinality($2::text[]) = 0 OR customer = ANY($2)) \
                   AND (devices > 0 OR alerts_pending > 0 OR firing_info > 0 OR firing_warning > 0 \
                     OR firing_critical > 0)",
                &[&tenant, &allowed],
            )
            .await
            .map_err(be)?;
        tx.commit().await.map_err(be)?;
        let mut per_site: BTreeMap<SiteId, SiteCounts> = BTreeMap::new();
        let mut sev: BTreeMap<Severity, u64> = BTreeMap::new();
        for r in &rows {
            let n = |k: usize| u(r.get::<_, i64>(k));
            let firing = [
                (Severity::Info, n(8)),
                (Severity::Warning, n(9)),
                (Severity::Critical, n(10)),
            ];
            for (s, k) in firing {
                if k > 0 {
                    *sev.entry(s).or_default() += k;
                }
            }
            per_site.insert(
                SiteId::from(r.get::<_, String>(0)),
                SiteCounts {
                    devices: n(1),
                    online: n(2),
                    offline: n(3),
                    pending: n(4),
                    revoked: n(5),
                    critical: n(6),
                    alerts_firing: firing.iter().map(|(_, k)| k).sum(),
                    alerts_pending: n(7),
                },
            );
        }
        Ok(FleetCounts {
            per_site,
            firing_by_severity: sev.into_iter().collect(),
        })
    }
}

/// How a search's page is chosen.
enum PagePlan {
    /// The planner's choice with `ORDER BY … LIMIT` (many matches: an
    /// index in the page's order, read up to the limit).
    Ordered,
    /// Every match first (a materialised CTE), then the page sorted out
    /// of them (few matches, known from the count: the planner cannot
    /// misjudge a filter's selectivity into reading an index in order).
    MatchFirst,
    /// Like `Ordered`, knowing that more than the count's cap match (see
    /// [`PagePlan::prepare`]).
    Dense,
    /// Like `MatchFirst`, among these (site, device) ids (the matches of
    /// a word or tag search, read first).
    Among(Vec<String>, Vec<String>),
}

impl PagePlan {
    /// `Dense`: the matches are many (more than the count's cap), so the
    /// page is the first rows of an index in the page's order, but the
    /// planner cannot know it (it estimates a `LIKE`'s matches at a few
    /// rows and scans the table, or another index, to sort them): this
    /// transaction may not scan the table, build bitmaps or sort when an
    /// index gives the order.
    async fn prepare(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<()> {
        if let PagePlan::Dense = self {
            tx.batch_execute(
                "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
                 SET LOCAL enable_sort = off",
            )
            .await
            .map_err(be)?;
        }
        Ok(())
    }
}

/// At most this many matches are read first and sorted (`MatchFirst`).
const MATCH_FIRST: u64 = 5_000;

/// How a search's count query reads.
#[derive(Debug, Clone, Copy)]
enum TotalKind {
    /// Summed per-site counts: exact.
    Exact,
    /// Matches counted up to the cap (+1, to tell "more").
    UpTo(u64),
}

/// The `WHERE` of a search's devices (`d`), without the cursor; returns
/// the tenant's parameter and the filter.
fn device_filter(ps: &mut Params, tenant: &str, q: &DeviceSearch) -> (String, String) {
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
        // From the few firing critical alerts (`alerts_critical_device`).
        filter += &format!(
            " AND (d.site_id, d.device) IN (SELECT a.site_id, a.device FROM alerts a \
             WHERE a.tenant_id = {t} AND a.state = 'firing' AND a.severity = 'critical' \
             AND a.device IS NOT NULL)"
        );
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
    (t, filter)
}

/// A search's `total` is exact up to this many matches, then "more than
/// this many" ([`SearchPage::total_more`]) when no per-site count answers
/// it: counting every match of a word over 100,000 devices costs more than
/// the page itself.
pub const TOTAL_CAP: u64 = 10_000;

/// The columns of `site_counts`, in [`counts_select`]'s order.
const COUNTS_COLUMNS: &str = "tenant_id, site_id, customer, devices, online, offline, pending, \
    revoked, critical, alerts_pending, firing_info, firing_warning, firing_critical";

/// The counts of the sites `s` matching `scope`, one row each in
/// [`COUNTS_COLUMNS`]' order (device counters by the status of the search
/// keys, as the RocksDB index counts them).
fn counts_select(scope: &str) -> String {
    let rank = |s| status_rank(s) as i16;
    format!(
        "SELECT s.tenant_id, s.site_id, s.customer, d.*, a.* FROM sites s, \
         LATERAL (SELECT count(*), \
           count(*) FILTER (WHERE dd.status_rank = {}), \
           count(*) FILTER (WHERE dd.status_rank = {}), \
           count(*) FILTER (WHERE dd.status_rank = {}), \
           count(*) FILTER (WHERE dd.status_rank = {}), \
           count(*) FILTER (WHERE EXISTS (SELECT 1 FROM alerts c WHERE c.tenant_id = dd.tenant_id \
             AND c.site_id = dd.site_id AND c.device = dd.device AND c.state = 'firing' \
             AND c.severity = 'critical')) \
           FROM devices dd WHERE dd.tenant_id = s.tenant_id AND dd.site_id = s.site_id) d, \
         LATERAL (SELECT count(*) FILTER (WHERE al.state = 'pending'), \
           count(*) FILTER (WHERE al.state = 'firing' AND al.severity = 'info'), \
           count(*) FILTER (WHERE al.state = 'firing' AND al.severity = 'warning'), \
           count(*) FILTER (WHERE al.state = 'firing' AND al.severity = 'critical') \
           FROM alerts al WHERE al.tenant_id = s.tenant_id AND al.site_id = s.site_id \
             AND al.state IN ('pending', 'firing')) a \
         WHERE {scope}",
        rank(DeviceStatus::Online),
        rank(DeviceStatus::Offline),
        rank(DeviceStatus::Pending),
        rank(DeviceStatus::Revoked),
    )
}

/// Recounts one site into `site_counts`, inside the apply transaction
/// (after its writes, under the site row's lock).
pub(super) async fn recount_site(
    tx: &deadpool_postgres::Transaction<'_>,
    tenant: &str,
    site_id: &str,
) -> Result<()> {
    let set: Vec<String> = COUNTS_COLUMNS
        .split(", ")
        .skip(2)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    tx.execute(
        &format!(
            "INSERT INTO site_counts ({COUNTS_COLUMNS}) {} \
             ON CONFLICT (tenant_id, site_id) DO UPDATE SET {}",
            counts_select("s.tenant_id = $1 AND s.site_id = $2"),
            set.join(", ")
        ),
        &[&tenant, &site_id],
    )
    .await
    .map_err(be)?;
    Ok(())
}
