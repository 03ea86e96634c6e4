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
            println!("requests             {}", s.requests);
            println!(
                "hit ratio            {:.1}% ({} hits, {} misses, {} coalesced, {} pass-through)",
                s.hit_ratio * 100.0,
                s.hits,
                s.misses,
                s.coalesced,
                s.passthrough
            );
            println!("bytes from cache     {}", human_bytes(s.bytes_from_cache));
            println!(
                "bytes from upstream  {}",
                human_bytes(s.bytes_from_upstream)
            );
            println!(
                "upstream             {} requests, {} received, {} errors",
                s.upstream_requests,
                human_bytes(s.upstream_bytes),
                s.upstream_errors
            );
            println!(
                "stored               {} files, {} of {} ({} pinned)",
                s.stored_files,
                human_bytes(s.stored_bytes),
                human_bytes(s.max_bytes),
                s.pinned_files
            );
            println!(
                "verify failures      {}   evictions {}   stale served {}",
                s.verify_failures, s.evictions, s.stale_served
            );
            if !s.top_files.is_empty() {
                println!("\nTOP FILES");
                for f in &s.top_files {
                    println!("{:>6} hits  {:>10}  {}", f.hits, human_bytes(f.size), f.url);
                }
            }
            if !s.clients.is_empty() {
                println!("\nCLIENTS");
                for c in &s.clients {
                    println!(
                        "{:<40} {:>6} requests {:>6} hits  {}",
                        c.client,
                        c.requests,
                        c.hits,
                        human_bytes(c.bytes)
                    );
                }
            }
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
