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
    /// Append one JSON line per request received to FILE (created or
    /// truncated): the model, how it was answered, the step, the status and
    /// the request body as sent.
    #[arg(long, value_name = "FILE")]
    pub request_log: Option<PathBuf>,
}

pub async fn run(a: MockLlmArgs) -> anyhow::Result<ExitCode> {
    if !a.scripts.is_dir() {
        return Err(UsageError(format!(
            "--scripts {}: not a directory",
            a.scripts.display()
        ))
        .into());
    }
    let options = crate::mock_llm::MockOptions {
        request_log: a.request_log.clone(),
    };
    let m = crate::mock_llm::MockLlm::start_with(a.scripts.clone(), a.addr, options)
        .await
        .context("starting the scripted LLM")?;
    println!("{}", m.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    m.shutdown.cancel();
    Ok(ExitCode::SUCCESS)
}
