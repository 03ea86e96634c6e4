//! `outpost uplink join` (join an `outpost-central`; the running appliance
//! starts syncing) and `outpost uplink status`.

use anyhow::Context;
use clap::Subcommand;

use crate::api::uplink_types::{JoinRequest, UplinkStatus};
use crate::client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum UplinkCmd {
    /// Join a central with the token and fingerprint printed by
    /// `outpost-central site add`; the running appliance starts syncing.
    Join {
        /// HOST:PORT of central's QUIC listener.
        #[arg(long)]
        central: String,
        /// The one-time site token (`--token` is accepted here too; the
        /// admin API token then comes from DATA/admin.token or
        /// OUTPOST_ADMIN_TOKEN).
        #[arg(long = "join-token")]
        join_token: String,
        #[arg(long)]
        ca_fingerprint: String,
        /// How often a batch is compacted.
        #[arg(long, default_value = "60s")]
        interval: String,
    },
    /// Link state, last acknowledged sequence, backlog.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// In `outpost uplink join`, `--token` is the site token of the documented
/// interface, not the global admin API token: rename it before parsing.
pub fn join_token_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let pos = |w: &str, from: usize| {
        args.iter()
            .skip(from)
            .position(|a| a == w)
            .map(|p| p + from)
    };
    let Some(u) = pos("uplink", 1) else {
        return args;
    };
    let Some(j) = pos("join", u + 1).filter(|j| *j == u + 1) else {
        return args;
    };
    for a in args.iter_mut().skip(j + 1) {
        if a == "--token" {
            *a = "--join-token".into();
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--token=")) {
            *a = format!("--join-token={v}").into();
        }
    }
    args
}

/// Runs one `outpost uplink` command.
pub async fn run(cmd: UplinkCmd, c: AdminClient) -> anyhow::Result<()> {
    match cmd {
        UplinkCmd::Join {
            central,
            join_token,
            ca_fingerprint,
            interval,
        } => {
            // The appliance gives up on its own after JOIN_WAIT_MAX (a slow
            // WAN); wait a little longer so its message is the one shown.
            let wait = outpost_uplink::join::JOIN_WAIT_MAX.as_secs() + 15;
            let s: UplinkStatus = c
                .post_waiting(
                    "/api/v1/uplink/join",
                    &JoinRequest {
                        central,
                        token: join_token,
                        ca_fingerprint,
                        interval: Some(interval),
                    },
                    wait,
                )
                .await
                .context("joining central")?;
            println!("{}", s.site_id.unwrap_or_default());
            Ok(())
        }
        UplinkCmd::Status { json } => {
            if json {
                let raw = c.get_raw("/api/v1/uplink/status").await?;
                println!("{}", String::from_utf8_lossy(&raw));
                return Ok(());
            }
            let s: UplinkStatus = c.get("/api/v1/uplink/status").await?;
            print_status(&s);
            Ok(())
        }
    }
}

fn print_status(s: &UplinkStatus) {
    fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
        v.as_ref().map_or_else(|| "-".into(), T::to_string)
    }
    println!("joined          {}", s.joined);
    println!("link            {}", s.link.as_str());
    println!("central         {}", opt(&s.central));
    println!(
        "site            {} ({})",
        opt(&s.site_id),
        opt(&s.site_name)
    );
    println!(
        "tenant          {} / customer {}",
        opt(&s.tenant),
        opt(&s.customer)
    );
    println!("interval        {}ms", s.interval_ms);
    println!("last acked seq  {}", s.last_acked_seq);
    println!("next seq        {}", s.next_seq);
    println!(
        "backlog         {} batches, {} bytes",
        s.backlog_batches, s.backlog_bytes
    );
    println!("dropped rollups {}", s.dropped_rollups_total);
    if let Some(e) = &s.last_error {
        println!("last error      {e}");
    }
    if let Some(w) = s.tenant_warning() {
        println!("WARNING         {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(|s| s.into()).collect()
    }

    #[test]
    fn token_after_uplink_join_is_the_site_token() {
        assert_eq!(
            join_token_args(args(&[
                "outpost",
                "--token",
                "admin",
                "uplink",
                "join",
                "--token",
                "site",
                "--x",
                "--token=s2"
            ])),
            args(&[
                "outpost",
                "--token",
                "admin",
                "uplink",
                "join",
                "--join-token",
                "site",
                "--x",
                "--join-token=s2"
            ])
        );
    }

    #[test]
    fn token_elsewhere_is_the_admin_token() {
        let other = args(&["outpost", "uplink", "status", "--token", "admin"]);
        assert_eq!(join_token_args(other.clone()), other);
        let gap = args(&["outpost", "uplink", "--json", "join", "--token", "t"]);
        assert_eq!(join_token_args(gap.clone()), gap, "join must follow uplink");
        let none = args(&["outpost", "devices", "--token", "admin"]);
        assert_eq!(join_token_args(none.clone()), none);
    }
}
