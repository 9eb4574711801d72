//! The operator's verbs: `status`, `pause`, `resume` (and the dead-letter and replay verbs,
//! and `subscriptions` for those stored through the API), each a request to the admin API of
//! a running hookbridge (`--admin-url`, the token from `HOOKBRIDGE_ADMIN_TOKEN`: the admin
//! token, or a tenant's). A table for people, `--output json` for scripts. And `listen`, a
//! receiver to try a subscription against.

mod attempts;
mod client;
mod listen;
mod operations;
mod status;
pub mod subscriptions;
mod table;

use clap::Args;

pub use client::AdminClient;

/// Where the admin API is, and how to print what it says.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin listener of a running hookbridge (its `server.admin_listen`). A host name
    /// that resolves to several addresses, such as a Kubernetes headless Service, reaches
    /// every replica behind it.
    #[arg(
        long,
        env = "HOOKBRIDGE_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub admin_url: String,
    /// `table` for people, `json` for scripts.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl AdminArgs {
    pub async fn client(&self) -> anyhow::Result<AdminClient> {
        let token = std::env::var("HOOKBRIDGE_ADMIN_TOKEN").ok();
        AdminClient::new(&self.admin_url, token).await
    }
}

pub use attempts::{AttemptArgs, attempts};
pub use listen::{Listen, listen};
pub use operations::{FilterArgs, dlq_list, dlq_show, redrive, replay};
pub use status::{pause, status};
