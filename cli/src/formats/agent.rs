//! (Not built yet.)

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::ClientArgs;

/// `synod agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The Unix socket to listen on (export SSH_AUTH_SOCK=PATH).
    #[arg(long)]
    pub socket: PathBuf,
    /// The cluster key the agent offers (repeat for several).
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Serves the agent until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let _ = args;
    bail!("not built yet")
}
