//! `fleet mock-llm`: serve the scripted LLM until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::UsageError;

#[derive(Debug, Args)]
pub struct MockLlmArgs {
    /// Directory of scripts: a request for model M is answered from DIR/M.json.
    #[arg(long, value_name = "DIR")]
    pub scripts: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
}

pub async fn run(a: MockLlmArgs) -> anyhow::Result<ExitCode> {
    if !a.scripts.is_dir() {
        return Err(UsageError(format!(
            "--scripts {}: not a directory",
            a.scripts.display()
        ))
        .into());
    }
    let m = crate::mock_llm::MockLlm::start(a.scripts.clone(), a.addr)
        .await
        .context("starting the scripted LLM")?;
    println!("{}", m.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    m.shutdown.cancel();
    Ok(ExitCode::SUCCESS)
}
