//! `outpost cache …`: the admin CLI of the patch cache (talks to the
//! running appliance's admin API). Plain values on stdout, `--json` for
//! machine use, exit code 0 only on success.

use anyhow::bail;
use clap::Subcommand;

use crate::cache::ops::{
    CacheStats, PinInfo, PinRequest, PrefetchRequest, PrefetchResult, VerifyReport,
};
use crate::client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Hit ratio, bytes from cache vs upstream, top files, per-client counts.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Pre-warm the cache: URLs, or every package of an index (`--index`).
    Prefetch {
        /// Files to fetch (covered by a verified index, or an InRelease).
        urls: Vec<String>,
        /// A Packages/Sources index URL: fetch the package files it lists.
        #[arg(long)]
        index: Option<String>,
        /// With --index: only these package names (repeatable).
        #[arg(long = "package")]
        packages: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached file; quarantine those that no longer match.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Pin a file so that it is never evicted (fetches it if needed).
    Pin {
        url: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a pin.
    Unpin { url: String },
    /// List pins.
    Pins {
        #[arg(long)]
        json: bool,
    },
    /// Forget a suite's accepted InRelease (its Date, Valid-Until and
    /// index entries): the next request verifies the upstream one afresh.
    /// URL: `http://HOST/…/dists/SUITE` or its InRelease.
    ResetSuite {
        url: String,
        #[arg(long)]
        json: bool,
    },
}

fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The text of `outpost cache stats`. Says which counters restart with
/// the appliance (since `since_ms`) and which are kept with each file.
pub fn format_stats(s: &CacheStats) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let since = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.since_ms),
    );
    let up = humantime::format_duration(std::time::Duration::from_secs(s.uptime_s));
    let _ = writeln!(
        o,
        "counters since       {since} (up {up}; they restart with the appliance)"
    );
    let _ = writeln!(o, "requests             {}", s.requests);
    let _ = writeln!(
        o,
        "hit ratio            {:.1}% ({} hits, {} misses, {} coalesced, {} pass-through)",
        s.hit_ratio * 100.0,
        s.hits,
        s.misses,
        s.coalesced,
        s.passthrough
    );
    let _ = writeln!(
        o,
        "bytes from cache     {}",
        human_bytes(s.bytes_from_cache)
    );
    let _ = writeln!(
        o,
        "bytes from upstream  {}",
        human_bytes(s.bytes_from_upstream)
    );
    let _ = writeln!(
        o,
        "upstream             {} requests, {} received, {} errors",
        s.upstream_requests,
        human_bytes(s.upstream_bytes),
        s.upstream_errors
    );
    let _ = writeln!(
        o,
        "stored               {} files, {} of {} ({} pinned)",
        s.stored_files,
        human_bytes(s.stored_bytes),
        human_bytes(s.max_bytes),
        s.pinned_files
    );
    let _ = writeln!(
        o,
        "verify failures      {}   evictions {}   stale served {}",
        s.verify_failures, s.evictions, s.stale_served
    );
    if !s.top_files.is_empty() {
        let _ = writeln!(
            o,
            "\nTOP FILES (counted per cached file, kept across restarts)"
        );
        let _ = writeln!(o, "{:>6}  {:>6}  {:>10}  URL", "HITS", "MISSES", "SIZE");
        for f in &s.top_files {
            let _ = writeln!(
                o,
                "{:>6}  {:>6}  {:>10}  {}",
                f.hits,
                f.misses,
                human_bytes(f.size),
                f.url
            );
        }
    }
    if !s.clients.is_empty() {
        let _ = writeln!(o, "\nCLIENTS (since {since})");
        let _ = writeln!(
            o,
            "{:<40}  {:>8}  {:>6}  {:>10}",
            "CLIENT", "REQUESTS", "HITS", "BYTES"
        );
        for c in &s.clients {
            let _ = writeln!(
                o,
                "{:<40}  {:>8}  {:>6}  {:>10}",
                c.client,
                c.requests,
                c.hits,
                human_bytes(c.bytes)
            );
        }
    }
    o
}

/// Runs one `outpost cache` command.
pub async fn run(cmd: CacheCmd, client: AdminClient) -> anyhow::Result<()> {
    match cmd {
        CacheCmd::Stats { json } => {
            if json {
                let raw = client.get_raw("/api/v1/cache/stats").await?;
                println!("{}", String::from_utf8_lossy(&raw));
                return Ok(());
            }
            let s: CacheStats = client.get("/api/v1/cache/stats").await?;
            print!("{}", format_stats(&s));
            Ok(())
        }
        CacheCmd::Prefetch {
            urls,
            index,
            packages,
            json,
        } => {
            if urls.is_empty() && index.is_none() {
                bail!("give URLs to prefetch or --index URL");
            }
            let results: Vec<PrefetchResult> = client
                .post(
                    "/api/v1/cache/prefetch",
                    &PrefetchRequest {
                        urls,
                        index,
                        packages,
                    },
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string(&results)?);
            } else {
                for r in &results {
                    match &r.error {
                        None => println!("{} {} {}", r.result, r.size, r.url),
                        Some(e) => eprintln!("error {}: {e}", r.url),
                    }
                }
            }
            let failed = results.iter().filter(|r| r.result == "error").count();
            if failed > 0 {
                bail!(
                    "{failed} of {} files could not be prefetched",
                    results.len()
                );
            }
            Ok(())
        }
        CacheCmd::Verify { json } => {
            let r: VerifyReport = client
                .post("/api/v1/cache/verify", &serde_json::json!({}))
                .await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("checked {} files ({})", r.checked, human_bytes(r.bytes));
                for b in &r.bad {
                    println!("quarantined {b}");
                }
            }
            if !r.bad.is_empty() {
                bail!(
                    "{} cached files failed verification and were quarantined",
                    r.bad.len()
                );
            }
            Ok(())
        }
        CacheCmd::Pin { url, reason } => {
            let p: PinInfo = client
                .post("/api/v1/cache/pins", &PinRequest { url, reason })
                .await?;
            println!("{}", p.sha256);
            Ok(())
        }
        CacheCmd::Unpin { url } => {
            let _: serde_json::Value = client
                .post("/api/v1/cache/unpin", &serde_json::json!({ "url": url }))
                .await?;
            Ok(())
        }
        CacheCmd::ResetSuite { url, json } => {
            let r: crate::cache::suite::ResetSuiteReport = client
                .post(
                    "/api/v1/cache/reset-suite",
                    &serde_json::json!({ "url": url }),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "reset {} ({}; {} index entries forgotten)",
                    r.suite,
                    if r.had_state {
                        "its accepted InRelease forgotten"
                    } else {
                        "no InRelease was accepted"
                    },
                    r.index_entries
                );
            }
            Ok(())
        }
        CacheCmd::Pins { json } => {
            let pins: Vec<PinInfo> = client.get("/api/v1/cache/pins").await?;
            if json {
                println!("{}", serde_json::to_string(&pins)?);
            } else {
                for p in &pins {
                    println!(
                        "{}  {:>10}  {}  {}",
                        &p.sha256[..16],
                        human_bytes(p.size),
                        p.url,
                        p.reason
                    );
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ops::{ClientStat, TopFile};

    fn stats() -> CacheStats {
        CacheStats {
            since_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            uptime_s: 3 * 3600 + 120,
            requests: 3,
            hits: 1,
            misses: 2,
            coalesced: 0,
            passthrough: 0,
            hit_ratio: 1.0 / 3.0,
            bytes_from_cache: 10,
            bytes_from_upstream: 20,
            upstream_bytes: 20,
            upstream_requests: 2,
            upstream_errors: 0,
            verify_failures: 0,
            evictions: 0,
            stale_served: 0,
            stored_files: 2,
            stored_bytes: 30,
            max_bytes: 1 << 30,
            pinned_files: 0,
            allowed_hosts: vec![],
            top_files: vec![
                TopFile {
                    url: "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10_amd64.deb"
                        .into(),
                    sha256: "ab".repeat(32),
                    size: 10,
                    hits: 1,
                    misses: 1,
                },
                TopFile {
                    url: "http://deb.debian.org/debian/dists/bookworm/InRelease".into(),
                    sha256: "cd".repeat(32),
                    size: 20,
                    hits: 0,
                    misses: 1,
                },
            ],
            clients: vec![ClientStat {
                client: "127.0.0.1".into(),
                requests: 3,
                hits: 1,
                bytes: 30,
            }],
        }
    }

    #[test]
    fn stats_text_counts_a_fetched_file_as_a_miss_not_a_hit() {
        let t = format_stats(&stats());
        let line = t
            .lines()
            .find(|l| l.ends_with("/dists/bookworm/InRelease"))
            .unwrap_or_else(|| panic!("{t}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[..2], ["0", "1"], "hits 0, misses 1: {line}");
        assert!(t.contains("  HITS  MISSES"), "{t}");
    }

    #[test]
    fn stats_text_labels_the_counting_period() {
        let t = format_stats(&stats());
        assert!(
            t.starts_with(
                "counters since       2026-01-01T00:00:00Z (up 3h 2m; they restart with the appliance)\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("TOP FILES (counted per cached file, kept across restarts)"),
            "{t}"
        );
        assert!(t.contains("CLIENTS (since 2026-01-01T00:00:00Z)"), "{t}");
    }
}
