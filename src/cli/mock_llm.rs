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
    /// Append every request to FILE as a JSON line (model, step, time): a count
    /// of each conversation's requests kept outside the fleet.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

pub async fn run(a: MockLlmArgs) -> anyhow::Result<ExitCode> {
    if !a.scripts.is_dir() {
        return Err(UsageError(format!(
            "--scripts {}: not a directory",
            a.scripts.display()
        ))
        .into());
    }
    let m = crate::mock_llm::MockLlm::start_with_log(a.scripts.clone(), a.addr, a.log.clone())
        .await
        .context("starting the scripted LLM")?;
    println!("{}", m.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    m.shutdown.cancel();
    Ok(ExitCode::SUCCESS)
}
