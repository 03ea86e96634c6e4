//! `outpost advisories import|status` and `outpost patches
//! device|list|cve|summary|report|scan`: the advisory catalog and the assessment views
//! of the running appliance (`/api/v1/advisories`, `/api/v1/patches/...`).

use anyhow::Context;
use clap::{Args, Subcommand};

use super::table::{ago, print_table};
use crate::client::AdminClient;
use crate::patches::service::{AdvisoriesStatus, DevicePatches, ImportOutcome, Summary};
use outpost_patch::assess::fleet::{CveView, PatchSummary};
use outpost_patch::assess::human_bytes;
use outpost_proto::DeviceId;

#[derive(Subcommand, Debug)]
pub enum AdvisoriesCmd {
    /// Import a feed (a file, or an http(s) URL the appliance fetches) and
    /// put it in service; a malformed feed is refused with its position
    /// and the previous catalog stays in service.
    Import {
        /// FILE or URL.
        source: String,
        /// `debian-tracker` or `osv` (default: guessed from the content:
        /// OSV records carry `"affected"`).
        #[arg(long)]
        format: Option<String>,
        /// The source's name in the catalog (default: the format's name);
        /// importing the same name again replaces it.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Imported sources, their counts and age.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PatchesCmd {
    /// One device: its fixable and open CVEs and its missing patches.
    Device {
        id: DeviceId,
        #[arg(long)]
        json: bool,
    },
    /// Every missing patch across the site, with the devices that need it.
    List(JsonArg),
    /// Which devices are exposed to a CVE, and can they be fixed now?
    Cve {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Fleet compliance, per customer, devices, most widespread CVEs,
    /// daily history.
    Summary {
        /// Only this customer's devices.
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask a device for a package scan now (a `scan_packages` command; the
    /// device's open one if there is one). Prints the command id; with
    /// --wait, waits until the agent has buffered the scan and prints the
    /// command's output (packages, bytes).
    Scan {
        id: DeviceId,
        /// A delta against the agent's last scan instead of a whole one.
        #[arg(long)]
        delta: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Approve one exact patch for a scope (prints the rule id).
    Approve(super::deploy::VerdictArgs),
    /// Decline one exact patch for a scope (prints the rule id).
    Decline(super::deploy::VerdictArgs),
    /// Which rule decided each missing patch of a device.
    Approvals(super::deploy::ApprovalsArgs),
    /// Every device's missing patches as a report: `--format csv` (one
    /// line per missing patch), `json` or `pdf` (the compliance report:
    /// summary, devices, top missing patches and open CVEs) on stdout.
    Report {
        #[arg(long, default_value = "csv")]
        format: String,
        /// Only this customer's devices.
        #[arg(long)]
        customer: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

fn guess_format(body: &[u8]) -> &'static str {
    let head = &body[..body.len().min(256 * 1024)];
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    let osv = first == Some(&b'[')
        || head.windows(10).any(|w| w == b"\"affected\"")
        || head.windows(15).any(|w| w == b"\"schema_version\"");
    if osv { "osv" } else { "debian-tracker" }
}

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn ms_ago(ms: Option<u64>) -> String {
    ms.map(ago).unwrap_or_else(|| "-".into())
}

pub async fn run_advisories(cmd: AdvisoriesCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        AdvisoriesCmd::Import {
            source,
            format,
            name,
            json,
        } => {
            let is_url = source.starts_with("http://") || source.starts_with("https://");
            let (body, format) = if is_url {
                (
                    Vec::new(),
                    format.unwrap_or_else(|| "debian-tracker".into()),
                )
            } else {
                let body = std::fs::read(&source).with_context(|| format!("reading {source}"))?;
                let f = format.unwrap_or_else(|| guess_format(&body).to_string());
                (body, f)
            };
            let mut path = format!("/api/v1/advisories/import?format={}", query_escape(&format));
            if let Some(n) = &name {
                path.push_str(&format!("&name={}", query_escape(n)));
            }
            if is_url {
                path.push_str(&format!("&url={}", query_escape(&source)));
            } else {
                let loc = std::fs::canonicalize(&source)
                    .map(|p| p.display().to_string())
                    .unwrap_or(source.clone());
                path.push_str(&format!("&location={}", query_escape(&loc)));
            }
            let answer = c.request("POST", &path, Some(body)).await?;
            let out: ImportOutcome =
                serde_json::from_slice(&answer).context("decoding the import answer")?;
            if json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!(
                    "imported {} ({}): {} advisories, {} vulnerabilities; {} packages changed, {} devices re-assessed ({} ms import, {} ms assessment)",
                    out.source,
                    out.format,
                    out.advisories,
                    out.vulns,
                    out.changed_packages,
                    out.devices_reassessed,
                    out.import_ms,
                    out.reassess_ms
                );
            }
            Ok(())
        }
        AdvisoriesCmd::Status { json } => {
            let s: AdvisoriesStatus = c.get("/api/v1/advisories").await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
                return Ok(());
            }
            if s.sources.is_empty() {
                println!("no advisories imported (outpost advisories import FILE|URL)");
                return Ok(());
            }
            let rows = s
                .sources
                .iter()
                .map(|x| {
                    vec![
                        x.name.clone(),
                        x.format.to_string(),
                        x.advisories.to_string(),
                        x.vulns.to_string(),
                        x.skipped.to_string(),
                        ago(x.imported_at_ms),
                        if x.loaded { "yes" } else { "NO" }.into(),
                        x.location.clone(),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(
                &[
                    "SOURCE",
                    "FORMAT",
                    "ADVISORIES",
                    "VULNS",
                    "SKIPPED",
                    "IMPORTED",
                    "LOADED",
                    "LOCATION",
                ],
                &rows,
            );
            println!("releases: {}", s.releases.join(", "));
            Ok(())
        }
    }
}

pub async fn run_patches(cmd: PatchesCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        PatchesCmd::Device { id, json } => {
            let d: DevicePatches = c.get(&format!("/api/v1/patches/devices/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string(&d)?);
                return Ok(());
            }
            println!(
                "device {}  {}  packages {}  upgradable {}  scanned {}",
                d.device,
                d.os.as_deref().unwrap_or("?"),
                d.packages,
                d.upgrades,
                ms_ago(d.scanned_at_ms)
            );
            if let Some(e) = &d.index_error {
                println!("apt indexes stale: {e}");
            }
            if d.needs_full_scan {
                println!(
                    "waiting for a full scan: {}",
                    d.last_error.as_deref().unwrap_or("")
                );
            }
            let Some(a) = &d.assessment else {
                println!("not assessed yet");
                return Ok(());
            };
            println!(
                "compliance {:?}  risk {}  reboot required {}{}",
                a.compliance,
                a.risk.map(|r| r.to_string()).unwrap_or("-".into()),
                a.reboot_required,
                a.status_reason
                    .as_deref()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default()
            );
            let rows: Vec<Vec<String>> = a
                .patches
                .iter()
                .map(|p| {
                    vec![
                        p.source.to_string(),
                        p.installed.to_string(),
                        p.candidate
                            .as_ref()
                            .map(|c| c.to_string())
                            .unwrap_or("-".into()),
                        if p.security { "yes" } else { "" }.into(),
                        p.severity
                            .map(|s| format!("{s:?}").to_lowercase())
                            .unwrap_or_default(),
                        p.cves.len().to_string(),
                        p.risk.to_string(),
                        p.download_bytes.map(human_bytes).unwrap_or("?".into()),
                        ago(p.first_seen_ms),
                    ]
                })
                .collect();
            println!(
                "\nmissing patches: {}  download {}",
                rows.len(),
                a.download_size().display()
            );
            if !rows.is_empty() {
                print_table(
                    &[
                        "SOURCE",
                        "INSTALLED",
                        "CANDIDATE",
                        "SECURITY",
                        "SEVERITY",
                        "CVES",
                        "RISK",
                        "DOWNLOAD",
                        "MISSING SINCE",
                    ],
                    &rows,
                );
            }
            let findings = |fixable: bool| -> Vec<Vec<String>> {
                let it: Box<dyn Iterator<Item = _>> = if fixable {
                    Box::new(a.fixable())
                } else {
                    Box::new(a.open())
                };
                it.map(|(p, f)| {
                    vec![
                        f.id.to_string(),
                        format!("{:?}", f.severity).to_lowercase(),
                        p.source.to_string(),
                        p.installed.to_string(),
                        f.fixed.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                        if fixable && !f.fix_available {
                            "not in repositories".into()
                        } else {
                            String::new()
                        },
                    ]
                })
                .collect()
            };
            for (title, fixable) in [("fixable CVEs", true), ("open CVEs (no fix yet)", false)] {
                let rows = findings(fixable);
                println!("\n{title}: {}", rows.len());
                if !rows.is_empty() {
                    print_table(
                        &["CVE", "SEVERITY", "SOURCE", "INSTALLED", "FIXED", "NOTE"],
                        &rows,
                    );
                }
            }
            Ok(())
        }
        PatchesCmd::List(a) => {
            let list: Vec<PatchSummary> = c.get("/api/v1/patches").await?;
            if a.json {
                println!("{}", serde_json::to_string(&list)?);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|p| {
                    vec![
                        p.source.clone(),
                        p.devices.to_string(),
                        if p.security { "yes" } else { "" }.into(),
                        p.severity
                            .map(|s| format!("{s:?}").to_lowercase())
                            .unwrap_or_default(),
                        p.cves.to_string(),
                        p.max_risk.to_string(),
                        p.download.display(),
                        p.candidates.iter().cloned().collect::<Vec<_>>().join(" "),
                    ]
                })
                .collect::<Vec<_>>();
            print_table(
                &[
                    "SOURCE",
                    "DEVICES",
                    "SECURITY",
                    "SEVERITY",
                    "CVES",
                    "MAX RISK",
                    "DOWNLOAD",
                    "CANDIDATES",
                ],
                &rows,
            );
            Ok(())
        }
        PatchesCmd::Cve { id, json } => {
            let v: CveView<DeviceId> = c
                .get(&format!("/api/v1/patches/cves/{}", query_escape(&id)))
                .await?;
            if json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(());
            }
            println!(
                "{}: {} devices exposed — fixable now {}, fix not in repositories {}, open {}, undetermined {}",
                v.id,
                v.devices.len(),
                v.fixable_now,
                v.fix_not_in_repositories,
                v.open,
                v.undetermined
            );
            let rows = v
                .devices
                .iter()
                .map(|d| {
                    vec![
                        d.device.to_string(),
                        d.source.to_string(),
                        d.installed.to_string(),
                        format!("{:?}", d.state).to_lowercase(),
                        d.fixed.as_ref().map(|f| f.to_string()).unwrap_or_default(),
                        if d.fix_available { "yes" } else { "" }.into(),
                    ]
                })
                .collect::<Vec<_>>();
            if !rows.is_empty() {
                print_table(
                    &["DEVICE", "SOURCE", "INSTALLED", "STATE", "FIXED", "FIX NOW"],
                    &rows,
                );
            }
            Ok(())
        }
        PatchesCmd::Scan { id, delta, wait } => {
            let path = if delta {
                format!("/api/v1/patches/devices/{id}/scan?full=false")
            } else {
                format!("/api/v1/patches/devices/{id}/scan")
            };
            let v: crate::api::commands::CommandView = c
                .post(&path, &serde_json::json!({}))
                .await
                .with_context(|| format!("asking device {id} for a package scan"))?;
            if !wait {
                println!("{}", v.id);
                return Ok(());
            }
            super::commands::finish_waiting(&c, &v.id).await
        }
        PatchesCmd::Approve(a) => {
            super::deploy::run_verdict(a, outpost_patch::approval::Verdict::Approve, c).await
        }
        PatchesCmd::Decline(a) => {
            super::deploy::run_verdict(a, outpost_patch::approval::Verdict::Decline, c).await
        }
        PatchesCmd::Approvals(a) => super::deploy::run_approvals(a, c).await,
        PatchesCmd::Report { format, customer } => {
            let mut path = format!("/api/v1/patches/report?format={}", query_escape(&format));
            if let Some(c) = customer {
                path.push_str(&format!("&customer={}", query_escape(&c)));
            }
            let body = c.get_raw(&path).await?;
            // Bytes as they came (a PDF is binary).
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&body)
                .and_then(|()| out.flush())
                .context("writing the report to stdout")
        }
        PatchesCmd::Summary { customer, json } => {
            let path = match &customer {
                Some(cust) => format!("/api/v1/patches/summary?customer={}", query_escape(cust)),
                None => "/api/v1/patches/summary".to_string(),
            };
            let s: Summary = c.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
                return Ok(());
            }
            let f = &s.fleet;
            println!(
                "devices {}  compliant {}  non-compliant {}  unsupported release {}  no catalog {}  compliance {}",
                f.devices,
                f.compliant,
                f.non_compliant,
                f.unsupported_release,
                f.no_catalog,
                f.compliance_percent
                    .map(|p| format!("{p:.1}%"))
                    .unwrap_or("-".into())
            );
            println!(
                "missing security patches: critical {} high {} medium {} low {}; reboot required {}",
                f.security_patches.critical,
                f.security_patches.high,
                f.security_patches.medium,
                f.security_patches.low,
                f.reboot_required
            );
            println!("download for every missing patch: {}", s.download.display());
            if !s.customers.is_empty() {
                let rows = s
                    .customers
                    .iter()
                    .map(|c| {
                        let f = &c.summary;
                        vec![
                            if c.customer.is_empty() {
                                "-".to_string()
                            } else {
                                c.customer.clone()
                            },
                            f.devices.to_string(),
                            f.compliant.to_string(),
                            f.non_compliant.to_string(),
                            f.unsupported_release.to_string(),
                            f.compliance_percent
                                .map(|p| format!("{p:.1}%"))
                                .unwrap_or("-".into()),
                            f.security_patches.critical.to_string(),
                            f.security_patches.high.to_string(),
                            c.download.display(),
                        ]
                    })
                    .collect::<Vec<_>>();
                println!();
                print_table(
                    &[
                        "CUSTOMER",
                        "DEVICES",
                        "COMPLIANT",
                        "NON-COMPLIANT",
                        "UNSUPPORTED",
                        "COMPLIANCE",
                        "CRITICAL",
                        "HIGH",
                        "DOWNLOAD",
                    ],
                    &rows,
                );
            }
            let rows = s
                .devices
                .iter()
                .map(|d| {
                    vec![
                        d.device.to_string(),
                        if d.customer.is_empty() {
                            "-".to_string()
                        } else {
                            d.customer.clone()
                        },
                        d.release.clone().unwrap_or("-".into()),
                        format!("{:?}", d.compliance).to_lowercase(),
                        d.risk.map(|r| r.to_string()).unwrap_or("-".into()),
                        d.patches.to_string(),
                        d.fixable.to_string(),
                        d.open.to_string(),
                        if d.reboot_required { "yes" } else { "" }.into(),
                        d.download.display(),
                        ago(d.scanned_at_ms),
                    ]
                })
                .collect::<Vec<_>>();
            if !rows.is_empty() {
                println!();
                print_table(
                    &[
                        "DEVICE",
                        "CUSTOMER",
                        "RELEASE",
                        "COMPLIANCE",
                        "RISK",
                        "PATCHES",
                        "FIXABLE",
                        "OPEN",
                        "REBOOT",
                        "DOWNLOAD",
                        "SCANNED",
                    ],
                    &rows,
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_format_is_guessed_from_the_content() {
        assert_eq!(
            guess_format(br#"{"openssl": {"CVE-1": {}}}"#),
            "debian-tracker"
        );
        assert_eq!(guess_format(b"  [{\"id\": \"DSA-1\"}]"), "osv");
        assert_eq!(guess_format(br#"{"id": "DSA-1", "affected": []}"#), "osv");
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape("https://a/b?c=d"),
            "https%3A%2F%2Fa%2Fb%3Fc%3Dd"
        );
    }
}
