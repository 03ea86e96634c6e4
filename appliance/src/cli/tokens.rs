//! `outpost token create`: enrollment tokens (prints the token alone).

use clap::Subcommand;

use crate::api::tokens_types::{CreateToken, TokenCreated};
use crate::client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an enrollment token; prints the token alone.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        customer: String,
        /// Lifetime, e.g. 24h.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

/// Runs one `outpost token` command.
pub async fn run(cmd: TokenCmd, client: AdminClient) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            tenant,
            customer,
            ttl,
            uses,
        } => {
            let created: TokenCreated = client
                .post(
                    "/api/v1/tokens",
                    &CreateToken {
                        tenant,
                        customer,
                        ttl: Some(ttl),
                        uses: Some(uses),
                    },
                )
                .await?;
            println!("{}", created.token);
            Ok(())
        }
    }
}
