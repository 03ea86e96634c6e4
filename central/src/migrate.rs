//! `outpost-central migrate --from rocksdb:DIR --to postgres://…`: copies
//! a central's RocksDB store into a PostgreSQL database.
//!
//! Owns the copy plan (which column family feeds which table, in which
//! order), the progress rows (`outpost_migrate_progress`, schema V10) and
//! the count check. Must not touch the serving paths: it reads RocksDB rows
//! raw ([`RocksCentralStore::raw_rows_after`]) and writes the tables with
//! the owner role in the layout [`crate::pg`] writes them (the same codec
//! bodies, byte for byte, and the same key columns).
//!
//! **Resumable.** Each [`Step`] (a column family, or one kind of row of
//! one) copies chunks of rows in key order; a chunk's rows and the step's
//! progress row (the last source key copied) commit in one transaction, so
//! a run killed at any point resumes after its last committed chunk.
//! **Idempotent.** A finished step starts after its last key: a second run
//! copies nothing (and says so); rows with a natural key are also inserted
//! with `ON CONFLICT DO NOTHING`. **Verified.** At the end every table's
//! rows are counted on both sides ([`MigrateReport::mismatches`]).
//!
//! Not copied, on purpose:
//! - `commands_open`: RocksDB's index of open commands; PostgreSQL keeps
//!   `closed` on the command row itself.
//! - `applied_batches` rows: the applied sequence set (`applied_up_to` and
//!   the numbers above it) is part of each site row, which is copied, and
//!   PostgreSQL checks it before it looks at `(site, seq)` rows; a replayed
//!   batch stays a duplicate.
//! - login rate-limit state: a RocksDB central keeps it in memory only.
//! - what is not in the database: the central CA and signing keys
//!   (`DATA/ca.*`, `DATA/keys`) and the content of files (`DATA/files`);
//!   the data directory is copied (README "Central on PostgreSQL").

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use outpost_proto::codec;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use crate::commands::{AuditRow, CentralCommand};
use crate::model::{
    AlertRow, ApiTokenRecord, DeviceFacts, DeviceRow, JoinTokenRecord, SessionRecord, SiteRecord,
    UserRecord,
};
use crate::pg::{self, PgCentralStore, PgOptions, i};
use crate::rocks::RocksCentralStore;
use crate::store::AlertHistoryEntry;

/// Advisory lock key held by a running migration (one at a time per
/// database).
const MIGRATE_LOCK: i64 = 0x006f_7574_6d69_6772;

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "{0} is not a central RocksDB store (no CURRENT file): give the directory \
         `serve --store rocksdb:DIR` uses (by default DATA/db)"
    )]
    NotAStore(PathBuf),
    #[error(
        "the RocksDB store in {0} is open in another process (a running outpost-central?): \
         stop it before migrating ({1})"
    )]
    SourceInUse(PathBuf, String),
    #[error("opening the RocksDB store in {0}: {1}")]
    Source(PathBuf, String),
    #[error("opening the PostgreSQL store: {0}")]
    Target(String),
    #[error("another `outpost-central migrate` is running on this database")]
    Busy,
    #[error(
        "this database holds a migration from another RocksDB store ({found}, this one is \
         {this}): migrate into an empty database"
    )]
    OtherSource { found: String, this: String },
    #[error("step {step}: row {key}: {reason}")]
    Row {
        step: &'static str,
        key: String,
        reason: String,
    },
    #[error("step {0}: {1}")]
    Write(&'static str, String),
    #[error("stopped after {0} chunks as asked (a re-run resumes)")]
    Interrupted(u64),
}

/// How a migration runs.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Source rows per transaction (and per progress row update).
    pub chunk_rows: usize,
    /// Tests: stop (as a kill would) after this many committed chunks.
    pub stop_after_chunks: Option<u64>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            chunk_rows: 500,
            stop_after_chunks: None,
        }
    }
}

/// One table's counts at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    /// Rows the source holds for this table.
    pub source: u64,
    /// Rows the target holds.
    pub target: u64,
    /// Rows this run wrote.
    pub copied: u64,
}

/// What a run did and what it found.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    pub tables: Vec<TableCount>,
}

impl MigrateReport {
    /// Rows this run wrote, all tables.
    pub fn copied(&self) -> u64 {
        self.tables.iter().map(|t| t.copied).sum()
    }

    /// Tables whose counts differ.
    pub fn mismatches(&self) -> Vec<&TableCount> {
        self.tables
            .iter()
            .filter(|t| t.source != t.target)
            .collect()
    }
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<22} {:>10} {:>10} {:>10}",
            "table", "source", "target", "copied"
        )?;
        for t in &self.tables {
            let flag = if t.source == t.target {
                ""
            } else {
                "  MISMATCH"
            };
            writeln!(
                f,
                "{:<22} {:>10} {:>10} {:>10}{flag}",
                t.table, t.source, t.target, t.copied
            )?;
        }
        let bad = self.mismatches();
        if !bad.is_empty() {
            write!(
                f,
                "counts differ in {} table(s): {}",
                bad.len(),
                bad.iter().map(|t| t.table).collect::<Vec<_>>().join(", ")
            )
        } else if self.copied() == 0 {
            write!(
                f,
                "nothing new to copy: the target already holds every row (counts match)"
            )
        } else {
            write!(f, "copied {} rows; counts match", self.copied())
        }
    }
}

/// The copy steps, in order (device rows before their facts, commands
/// before their output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sites,
    Devices,
    DeviceFacts,
    Rollups,
    Alerts,
    History,
    Auth,
    Commands,
    CommandOutputs,
    CommandsHeld,
    Audit,
    PatchCompliance,
    PatchFindings,
    PatchCves,
    Deploy,
}

pub const STEPS: [Step; 15] = [
    Step::Sites,
    Step::Devices,
    Step::DeviceFacts,
    Step::Rollups,
    Step::Alerts,
    Step::History,
    Step::Auth,
    Step::Commands,
    Step::CommandOutputs,
    Step::CommandsHeld,
    Step::Audit,
    Step::PatchCompliance,
    Step::PatchFindings,
    Step::PatchCves,
    Step::Deploy,
];

/// RocksDB column families deliberately not copied (see the module docs).
pub const NOT_COPIED: [&str; 1] = ["commands_open"];

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Sites => "sites",
            Step::Devices => "devices",
            Step::DeviceFacts => "device_facts",
            Step::Rollups => "rollups",
            Step::Alerts => "alerts",
            Step::History => "history",
            Step::Auth => "auth",
            Step::Commands => "commands",
            Step::CommandOutputs => "command_outputs",
            Step::CommandsHeld => "commands_held",
            Step::Audit => "audit",
            Step::PatchCompliance => "patch_compliance",
            Step::PatchFindings => "patch_findings",
            Step::PatchCves => "patch_cves",
            Step::Deploy => "deploy",
        }
    }

    /// The column family the step reads.
    pub fn cf(self) -> &'static str {
        match self {
            Step::Sites => "sites",
            Step::Devices => "devices",
            Step::DeviceFacts => "device_facts",
            Step::Rollups => "rollup_buckets",
            Step::Alerts => "alerts",
            Step::History => "history",
            Step::Auth => "auth",
            Step::Commands | Step::CommandOutputs => "commands",
            Step::CommandsHeld => "commands_held",
            Step::Audit => "audit",
            Step::PatchCompliance => "patch_compliance",
            Step::PatchFindings => "patch_findings",
            Step::PatchCves => "patch_cves",
            Step::Deploy => "deploy",
        }
    }
}

/// The counted tables and how the target counts them (a "table" with a
/// parenthesis is a column filled by an update).
const COUNTS: [(&str, &str); 25] = [
    ("sites", "SELECT count(*) FROM sites"),
    ("devices", "SELECT count(*) FROM devices"),
    (
        "devices (ips/tags)",
        "SELECT count(*) FROM devices WHERE ips <> '{}' OR tags <> '{}'",
    ),
    ("rollups", "SELECT count(*) FROM rollups"),
    ("alerts", "SELECT count(*) FROM alerts"),
    ("alert_history", "SELECT count(*) FROM alert_history"),
    ("status_history", "SELECT count(*) FROM status_history"),
    ("join_tokens", "SELECT count(*) FROM join_tokens"),
    ("api_tokens", "SELECT count(*) FROM api_tokens"),
    ("users", "SELECT count(*) FROM users"),
    ("sessions", "SELECT count(*) FROM sessions"),
    ("commands", "SELECT count(*) FROM commands"),
    (
        "commands (output)",
        "SELECT count(*) FROM commands WHERE output <> '\\x'::bytea",
    ),
    ("scripts", "SELECT count(*) FROM scripts"),
    ("bulks", "SELECT count(*) FROM bulks"),
    ("central_files", "SELECT count(*) FROM central_files"),
    ("commands_held", "SELECT count(*) FROM commands_held"),
    ("audit", "SELECT count(*) FROM audit"),
    ("patch_compliance", "SELECT count(*) FROM patch_compliance"),
    ("patch_findings", "SELECT count(*) FROM patch_findings"),
    ("patch_cves", "SELECT count(*) FROM patch_cves"),
    ("deploy_orders", "SELECT count(*) FROM deploy_orders"),
    (
        "deploy_deliveries",
        "SELECT count(*) FROM deploy_deliveries",
    ),
    ("site_deployments", "SELECT count(*) FROM site_deployments"),
    ("device_decisions", "SELECT count(*) FROM device_decisions"),
];

type Param = Box<dyn ToSql + Sync + Send>;

/// One statement for one source row, and the table it counts in.
struct Write {
    count_as: &'static str,
    sql: &'static str,
    params: Vec<Param>,
    /// A rollup's bucket (its partition is made first).
    bucket_ms: Option<u64>,
}

fn w(count_as: &'static str, sql: &'static str, params: Vec<Param>) -> Write {
    Write {
        count_as,
        sql,
        params,
        bucket_ms: None,
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a key part is not UTF-8".to_string())
}

/// The first `n` NUL-separated parts of `k` (the last one takes the rest).
fn parts(k: &[u8], n: usize) -> Result<Vec<&[u8]>, String> {
    let p: Vec<&[u8]> = k.splitn(n, |&b| b == 0).collect();
    if p.len() == n {
        Ok(p)
    } else {
        Err(format!("key has {} parts, expected {n}", p.len()))
    }
}

fn be_u64(b: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(b)
        .map(u64::from_be_bytes)
        .map_err(|_| "expected 8 key bytes".to_string())
}

fn de<T: DeserializeOwned>(v: &[u8]) -> Result<T, String> {
    codec::decode(v).map_err(|e| format!("decoding the row: {e}"))
}

/// Site customers: a device row takes its site's current customer (what
/// RocksDB's fleet index does when it is built).
type Customers = HashMap<(String, String), String>;

/// The statements that copy source row `(k, v)` of `step`.
fn convert(step: Step, k: &[u8], v: &[u8], customers: &Customers) -> Result<Vec<Write>, String> {
    let v_owned = v.to_vec();
    Ok(match step {
        Step::Sites => {
            let s = SiteRecord::from_stored(v).map_err(|e| e.to_string())?;
            vec![w(
                "sites",
                "INSERT INTO sites (tenant_id, site_id, customer, body, name, name_lc) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                vec![
                    Box::new(s.tenant.to_string()),
                    Box::new(s.site_id.to_string()),
                    Box::new(s.customer.to_string()),
                    Box::new(v_owned),
                    Box::new(s.name.clone()),
                    Box::new(s.name.to_lowercase()),
                ],
            )]
        }
        Step::Devices => {
            let d: DeviceRow = de(v)?;
            let customer = customers
                .get(&(d.tenant.to_string(), d.site_id.to_string()))
                .cloned()
                .unwrap_or_else(|| d.customer.to_string());
            let keys = crate::fleet_index::search_keys(&d);
            let words = pg::search::words_lc(&keys.host_lc, &keys.os_lc, "");
            vec![w(
                "devices",
                "INSERT INTO devices (tenant_id, site_id, device, customer, hostname, status, \
                 last_seen_ms, body, host_lc, os_lc, status_rank, cpu_key, words_lc) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT DO NOTHING",
                vec![
                    Box::new(d.tenant.to_string()),
                    Box::new(d.site_id.to_string()),
                    Box::new(d.device.clone()),
                    Box::new(customer),
                    Box::new(d.hostname.clone()),
                    Box::new(d.clone().upgraded().status.as_str().to_string()),
                    Box::new(i(d.last_seen_ms)),
                    Box::new(v_owned),
                    Box::new(keys.host_lc.clone()),
                    Box::new(keys.os_lc.clone()),
                    Box::new(keys.status_rank() as i16),
                    Box::new(i(keys.cpu_key())),
                    Box::new(words),
                ],
            )]
        }
        Step::DeviceFacts => {
            let p = parts(k, 3)?;
            let f: DeviceFacts = de(v)?;
            if f.ips.is_empty() && f.tags.is_empty() {
                return Ok(Vec::new());
            }
            let tags_lc = pg::search::tags_lc(&f.tags);
            let ips_lc = pg::search::ips_lc(&f.ips);
            vec![w(
                "devices (ips/tags)",
                "UPDATE devices SET ips = $4, tags = $5, tags_lc = $6, ips_lc = $7, \
                 words_lc = host_lc || E'\\n' || os_lc || E'\\n' || $6 \
                 WHERE tenant_id = $1 AND site_id = $2 AND device = $3",
                vec![
                    Box::new(text(p[0])?),
                    Box::new(text(p[1])?),
                    Box::new(text(p[2])?),
                    Box::new(f.ips),
                    Box::new(f.tags),
                    Box::new(tags_lc),
                    Box::new(ips_lc),
                ],
            )]
        }
        Step::Rollups => {
            // tenant \0 site \0 device \0 bucket_be
            if k.len() < 9 || k[k.len() - 9] != 0 {
                return Err("rollup key without a bucket".into());
            }
            let bucket = be_u64(&k[k.len() - 8..])?;
            let p = parts(&k[..k.len() - 9], 3)?;
            vec![Write {
                count_as: "rollups",
                sql: "INSERT INTO rollups (tenant_id, site_id, device, bucket_ms, body) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                params: vec![
                    Box::new(text(p[0])?),
                    Box::new(text(p[1])?),
                    Box::new(text(p[2])?),
                    Box::new(i(bucket)),
                    Box::new(v_owned),
                ],
                bucket_ms: Some(bucket),
            }]
        }
        Step::Alerts => {
            let a: AlertRow = de(v)?;
            vec![w(
                "alerts",
                "INSERT INTO alerts (tenant_id, site_id, alert_id, customer, state, severity, \
                 at_ms, body, device) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT DO NOTHING",
                vec![
                    Box::new(a.tenant.to_string()),
                    Box::new(a.site_id.to_string()),
                    Box::new(i(a.alert_id)),
                    Box::new(a.customer.to_string()),
                    Box::new(a.state.as_str().to_string()),
                    Box::new(a.severity.as_str().to_string()),
                    Box::new(i(a.at_ms)),
                    Box::new(v_owned),
                    Box::new(a.device.clone()),
                ],
            )]
        }
        Step::History => {
            // tenant \0 site \0 kind \0 rest (rest may hold NUL bytes).
            let p = parts(k, 4)?;
            let (tenant, site, rest) = (text(p[0])?, text(p[1])?, p[3]);
            match p[2] {
                b"a" => {
                    // alert_be \0 (t number_be | k at_be by)
                    if rest.len() < 10 || rest[8] != 0 {
                        return Err("alert history key too short".into());
                    }
                    let alert_id = be_u64(&rest[..8])?;
                    let tail = &rest[9..];
                    let entry: AlertHistoryEntry = de(v)?;
                    let name = match tail.first() {
                        Some(b't') => {
                            let n = <[u8; 4]>::try_from(&tail[1..])
                                .map(u32::from_be_bytes)
                                .map_err(|_| "transition number is not 4 bytes".to_string())?;
                            format!("t{n:010}")
                        }
                        Some(b'k') if tail.len() >= 9 => {
                            let at = be_u64(&tail[1..9])?;
                            format!("k{at:020}{}", text(&tail[9..])?)
                        }
                        _ => return Err("unknown alert history entry".into()),
                    };
                    let at = match &entry {
                        AlertHistoryEntry::Transition { at_ms, .. }
                        | AlertHistoryEntry::Ack { at_ms, .. } => *at_ms,
                    };
                    vec![w(
                        "alert_history",
                        "INSERT INTO alert_history (tenant_id, site_id, alert_id, entry, at_ms, body) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(tenant),
                            Box::new(site),
                            Box::new(i(alert_id)),
                            Box::new(name),
                            Box::new(i(at)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b"d" => {
                    // device \0 since_be
                    if rest.len() < 9 || rest[rest.len() - 9] != 0 {
                        return Err("status history key without a time".into());
                    }
                    let since = be_u64(&rest[rest.len() - 8..])?;
                    vec![w(
                        "status_history",
                        "INSERT INTO status_history (tenant_id, site_id, device, since_ms, body) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(tenant),
                            Box::new(site),
                            Box::new(text(&rest[..rest.len() - 9])?),
                            Box::new(i(since)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                _ => return Err("unknown history kind".into()),
            }
        }
        Step::Auth => {
            if k.len() < 2 || k[1] != b'/' {
                return Err("auth key without a kind".into());
            }
            let rest = k[2..].to_vec();
            match k[0] {
                b'j' => {
                    let t: JoinTokenRecord = de(v)?;
                    vec![w(
                        "join_tokens",
                        "INSERT INTO join_tokens (token_hash, tenant_id, body) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(rest),
                            Box::new(t.tenant.to_string()),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b't' => {
                    // Copied as stored (its own layout: the record, then
                    // its expiry and revocation section).
                    let t = ApiTokenRecord::from_stored(v)
                        .map_err(|e| format!("decoding the row: {e}"))?;
                    vec![w(
                        "api_tokens",
                        "INSERT INTO api_tokens (token_hash, tenant_id, body) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(rest),
                            Box::new(t.principal.tenant.to_string()),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b'u' => {
                    let u: UserRecord = de(v)?;
                    vec![w(
                        "users",
                        "INSERT INTO users (tenant_id, name, body) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(u.tenant.to_string()),
                            Box::new(u.name.clone()),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b's' => {
                    let s: SessionRecord = de(v)?;
                    vec![w(
                        "sessions",
                        "INSERT INTO sessions (token_hash, tenant_id, user_name, expires_ms, body) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(rest),
                            Box::new(s.principal.tenant.to_string()),
                            Box::new(s.principal.name.clone()),
                            Box::new(i(s.expires_ms)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                _ => return Err("unknown auth kind".into()),
            }
        }
        Step::Commands | Step::CommandOutputs => {
            if k.first() == Some(&0xff) {
                if step == Step::CommandOutputs {
                    return Ok(Vec::new());
                }
                let f: crate::files::CentralFile = de(v)?;
                return Ok(vec![w(
                    "central_files",
                    "INSERT INTO central_files (tenant_id, id, site_id, created_ms, body) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    vec![
                        Box::new(f.tenant.to_string()),
                        Box::new(f.id.to_string()),
                        Box::new(f.site_id.to_string()),
                        Box::new(i(f.created_ms)),
                        Box::new(v_owned),
                    ],
                )]);
            }
            let p = parts(k, 3)?;
            let tenant = text(p[0])?;
            match (p[1], step) {
                (b"o", Step::CommandOutputs) => {
                    if v.is_empty() {
                        return Ok(Vec::new());
                    }
                    vec![w(
                        "commands (output)",
                        "UPDATE commands SET output = $3 WHERE tenant_id = $1 AND id = $2",
                        vec![Box::new(tenant), Box::new(text(p[2])?), Box::new(v_owned)],
                    )]
                }
                (_, Step::CommandOutputs) | (b"o", _) => Vec::new(),
                (b"r", _) => {
                    let c: CentralCommand = de(v)?;
                    vec![w(
                        "commands",
                        "INSERT INTO commands (tenant_id, id, site_id, device, customer, state, \
                         created_ms, closed, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(c.tenant.to_string()),
                            Box::new(c.id.to_string()),
                            Box::new(c.site_id.to_string()),
                            Box::new(c.device.clone()),
                            Box::new(c.customer.to_string()),
                            Box::new(pg::state_name(c.state)),
                            Box::new(i(c.created_ms)),
                            Box::new(c.closed),
                            Box::new(v_owned),
                        ],
                    )]
                }
                (b"s", _) => {
                    let s: crate::scripts::CentralScript = de(v)?;
                    vec![w(
                        "scripts",
                        "INSERT INTO scripts (tenant_id, name, version, body) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(tenant),
                            Box::new(s.name.clone()),
                            Box::new(i64::from(s.version)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                (b"u", _) => {
                    let b: crate::bulk::CentralBulk = de(v)?;
                    vec![w(
                        "bulks",
                        "INSERT INTO bulks (tenant_id, id, created_ms, body) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(b.tenant.to_string()),
                            Box::new(b.id.to_string()),
                            Box::new(i(b.created_ms)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                _ => return Err("unknown command row kind".into()),
            }
        }
        Step::CommandsHeld => {
            let p = parts(k, 4)?;
            vec![w(
                "commands_held",
                "INSERT INTO commands_held (tenant_id, site_id, run_id, command_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                vec![
                    Box::new(text(p[0])?),
                    Box::new(text(p[1])?),
                    Box::new(text(p[2])?),
                    Box::new(text(p[3])?),
                ],
            )]
        }
        Step::Audit => {
            let a: AuditRow = de(v)?;
            // No natural key: copied once by the progress row alone.
            vec![w(
                "audit",
                "INSERT INTO audit (tenant_id, at_ms, body) VALUES ($1, $2, $3)",
                vec![
                    Box::new(a.tenant.to_string()),
                    Box::new(i(a.at_ms)),
                    Box::new(v_owned),
                ],
            )]
        }
        Step::PatchCompliance | Step::PatchFindings => {
            let p = parts(k, 3)?;
            let (table, sql) = if step == Step::PatchCompliance {
                (
                    "patch_compliance",
                    "INSERT INTO patch_compliance (tenant_id, site_id, device, body) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
            } else {
                (
                    "patch_findings",
                    "INSERT INTO patch_findings (tenant_id, site_id, device, body) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
            };
            vec![w(
                table,
                sql,
                vec![
                    Box::new(text(p[0])?),
                    Box::new(text(p[1])?),
                    Box::new(text(p[2])?),
                    Box::new(v_owned),
                ],
            )]
        }
        Step::PatchCves => {
            let p = parts(k, 4)?;
            vec![w(
                "patch_cves",
                "INSERT INTO patch_cves (tenant_id, cve, site_id, device, body) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                vec![
                    Box::new(text(p[0])?),
                    Box::new(text(p[1])?),
                    Box::new(text(p[2])?),
                    Box::new(text(p[3])?),
                    Box::new(v_owned),
                ],
            )]
        }
        Step::Deploy => {
            let p = parts(k, 3)?;
            match p[1] {
                b"o" => {
                    let o: crate::deploy::OrderRecord = de(v)?;
                    vec![w(
                        "deploy_orders",
                        "INSERT INTO deploy_orders (tenant_id, id, created_ms, body) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(o.tenant.to_string()),
                            Box::new(o.id.clone()),
                            Box::new(i(o.created_ms)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b"d" => {
                    let d: crate::deploy::Delivery = de(v)?;
                    vec![w(
                        "deploy_deliveries",
                        "INSERT INTO deploy_deliveries (tenant_id, site_id, order_id, open, body) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(d.tenant.to_string()),
                            Box::new(d.site.to_string()),
                            Box::new(d.order.clone()),
                            Box::new(d.is_open()),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b"p" => {
                    let r: crate::deploy::SiteDeploymentRecord = de(v)?;
                    vec![w(
                        "site_deployments",
                        "INSERT INTO site_deployments (tenant_id, site_id, deployment, \
                         updated_at_ms, body) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(r.tenant.to_string()),
                            Box::new(r.site.to_string()),
                            Box::new(r.deployment.clone()),
                            Box::new(i(r.updated_at_ms)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                b"a" => {
                    let r: crate::deploy::DecisionsRecord = de(v)?;
                    vec![w(
                        "device_decisions",
                        "INSERT INTO device_decisions (tenant_id, site_id, device, computed_ms, body) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                        vec![
                            Box::new(r.tenant.to_string()),
                            Box::new(r.site.to_string()),
                            Box::new(r.decisions.device.clone()),
                            Box::new(i(r.decisions.computed_ms)),
                            Box::new(v_owned),
                        ],
                    )]
                }
                // Derived keys (the deployment list, a deployment's orders
                // and sites, their marker): PostgreSQL's are columns of
                // the rows above.
                b"L" | b"e" | b"q" | b"m" => Vec::new(),
                _ => return Err("unknown deployment row kind".into()),
            }
        }
    })
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens the source, refusing a directory that is not a store and one a
/// running central holds (RocksDB's LOCK file).
fn open_source(dir: &Path) -> Result<RocksCentralStore, MigrateError> {
    if !dir.join("CURRENT").is_file() {
        return Err(MigrateError::NotAStore(dir.to_path_buf()));
    }
    RocksCentralStore::open(dir).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("LOCK") || msg.contains("lock") {
            MigrateError::SourceInUse(dir.to_path_buf(), msg)
        } else {
            MigrateError::Source(dir.to_path_buf(), msg)
        }
    })
}

/// Copies the RocksDB store in `from` into the PostgreSQL database at
/// `to_url` (schema migrated first), then counts both sides.
pub async fn migrate(
    from: &Path,
    to_url: &str,
    opts: &MigrateOptions,
) -> Result<MigrateReport, MigrateError> {
    let src = open_source(from)?;
    // RocksDB's IDENTITY names this store; another one is refused.
    let source_id = std::fs::read_to_string(from.join("IDENTITY"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| from.display().to_string());
    let dst = PgCentralStore::connect(
        to_url,
        PgOptions {
            pool_size: 2,
            statement_timeout_ms: 600_000,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(|e| MigrateError::Target(e.to_string()))?;
    let dbe = |step: &'static str| {
        move |e: tokio_postgres::Error| MigrateError::Write(step, e.to_string())
    };
    let mut c = dst
        .client()
        .await
        .map_err(|e| MigrateError::Target(e.to_string()))?;
    let locked: bool = c
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(dbe("lock"))?
        .get(0);
    if !locked {
        return Err(MigrateError::Busy);
    }
    let other: Option<String> = c
        .query_opt(
            "SELECT source FROM outpost_migrate_progress WHERE source <> $1 LIMIT 1",
            &[&source_id],
        )
        .await
        .map_err(dbe("progress"))?
        .map(|r| r.get(0));
    if let Some(found) = other {
        return Err(MigrateError::OtherSource {
            found,
            this: source_id,
        });
    }
    let customers = site_customers(&src)?;
    let mut copied: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut chunks = 0u64;
    for step in STEPS {
        let name = step.name();
        let mut last: Option<Vec<u8>> = c
            .query_opt(
                "SELECT last_key FROM outpost_migrate_progress WHERE step = $1",
                &[&name],
            )
            .await
            .map_err(dbe(name))?
            .map(|r| r.get(0));
        loop {
            let rows = src
                .raw_rows_after(step.cf(), last.as_deref(), opts.chunk_rows.max(1))
                .map_err(|e| MigrateError::Write(name, e.to_string()))?;
            let Some((last_key, _)) = rows.last() else {
                break;
            };
            let last_key = last_key.to_vec();
            let mut writes = Vec::new();
            for (k, v) in &rows {
                writes.extend(convert(step, k, v, &customers).map_err(|reason| {
                    MigrateError::Row {
                        step: name,
                        key: hex(k),
                        reason,
                    }
                })?);
            }
            let buckets: Vec<u64> = writes.iter().filter_map(|w| w.bucket_ms).collect();
            if !buckets.is_empty() {
                dst.ensure_partitions(buckets)
                    .await
                    .map_err(|e| MigrateError::Write(name, e.to_string()))?;
            }
            let tx = c.transaction().await.map_err(dbe(name))?;
            for wr in &writes {
                let st = tx.prepare_cached(wr.sql).await.map_err(dbe(name))?;
                let params: Vec<&(dyn ToSql + Sync)> = wr
                    .params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                let n = tx.execute(&st, &params).await.map_err(dbe(name))?;
                *copied.entry(wr.count_as).or_default() += n;
            }
            let n_rows = i64::try_from(rows.len()).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO outpost_migrate_progress (step, source, last_key, copied, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (step) DO UPDATE SET \
                 last_key = excluded.last_key, \
                 copied = outpost_migrate_progress.copied + excluded.copied, \
                 updated_ms = excluded.updated_ms",
                &[&name, &source_id, &last_key, &n_rows, &i(crate::now_ms())],
            )
            .await
            .map_err(dbe(name))?;
            tx.commit().await.map_err(dbe(name))?;
            tracing::info!(step = name, rows = rows.len(), "migrate: chunk copied");
            last = Some(last_key);
            chunks += 1;
            if opts.stop_after_chunks == Some(chunks) {
                return Err(MigrateError::Interrupted(chunks));
            }
        }
    }
    // The console's per-site counts (`site_counts`), recounted from the
    // copied rows on every run: `connect` fills only sites without a row,
    // so a run killed between a site and the rest of its devices would
    // leave the counts of the rows copied so far for good.
    let (tenants, sites): (Vec<String>, Vec<String>) = customers.keys().cloned().unzip();
    c.execute(
        "DELETE FROM site_counts WHERE (tenant_id, site_id) IN \
         (SELECT * FROM unnest($1::text[], $2::text[]))",
        &[&tenants, &sites],
    )
    .await
    .map_err(dbe("site_counts"))?;
    drop(
        PgCentralStore::connect(
            to_url,
            PgOptions {
                pool_size: 1,
                statement_timeout_ms: 600_000,
                ..PgOptions::default()
            },
        )
        .await
        .map_err(|e| MigrateError::Target(e.to_string()))?,
    );
    // Counts: the source by the same conversion, the target by SQL.
    let mut source: BTreeMap<&'static str, u64> = BTreeMap::new();
    for step in STEPS {
        let mut last: Option<Vec<u8>> = None;
        loop {
            let rows = src
                .raw_rows_after(step.cf(), last.as_deref(), 10_000)
                .map_err(|e| MigrateError::Write(step.name(), e.to_string()))?;
            let Some((k, _)) = rows.last() else { break };
            last = Some(k.to_vec());
            for (k, v) in &rows {
                let writes =
                    convert(step, k, v, &customers).map_err(|reason| MigrateError::Row {
                        step: step.name(),
                        key: hex(k),
                        reason,
                    })?;
                for wr in writes {
                    *source.entry(wr.count_as).or_default() += 1;
                }
            }
        }
    }
    let mut report = MigrateReport::default();
    for (table, sql) in COUNTS {
        let target: i64 = c.query_one(sql, &[]).await.map_err(dbe("count"))?.get(0);
        report.tables.push(TableCount {
            table,
            source: source.get(table).copied().unwrap_or(0),
            target: u64::try_from(target).unwrap_or(0),
            copied: copied.get(table).copied().unwrap_or(0),
        });
    }
    c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(dbe("lock"))?;
    Ok(report)
}

fn site_customers(src: &RocksCentralStore) -> Result<Customers, MigrateError> {
    let mut out = Customers::new();
    let mut last: Option<Vec<u8>> = None;
    loop {
        let rows = src
            .raw_rows_after(Step::Sites.cf(), last.as_deref(), 10_000)
            .map_err(|e| MigrateError::Write("sites", e.to_string()))?;
        let Some((k, _)) = rows.last() else { break };
        last = Some(k.to_vec());
        for (k, v) in &rows {
            let s = SiteRecord::from_stored(v).map_err(|e| MigrateError::Row {
                step: "sites",
                key: hex(k),
                reason: e.to_string(),
            })?;
            out.insert(
                (s.tenant.to_string(), s.site_id.to_string()),
                s.customer.to_string(),
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
