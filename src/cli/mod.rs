//! The command-line surface: clap definitions (doc comments are the help text) and
//! dispatch to one file per subcommand. Library code below knows nothing of clap.

pub mod logs;
pub mod mock_llm;
pub mod progress;
pub mod run;
pub mod status;
pub mod table;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Bad input or usage: reported on one line, exit code 2, nothing started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Run coding-agent jobs in batch: in one process (`fleet run`) or on a fleet of
/// workers fed by RabbitMQ with results in S3.
#[derive(Debug, Parser)]
#[command(name = "fleet", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every job of a job file to a terminal state in this process (in-memory
    /// queue, local-directory store). Exit 0 iff all succeeded, 1 if any did not,
    /// 2 on bad input.
    Run(run::RunArgs),
    /// Show where a job, a batch, or the whole store stands.
    Status(status::StatusArgs),
    /// Print a job's events, human-readable.
    Logs(logs::LogsArgs),
    /// Serve scripted OpenAI-compatible chat completions (tests, benchmarks, the
    /// offline quickstart). Prints its base URL, then serves until interrupted.
    MockLlm(mock_llm::MockLlmArgs),
}

/// Where the store is.
#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// The store: a directory, or s3://bucket/prefix [env: FLEET_STORE] [default: ./fleet-data]
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub store: Option<String>,
}

impl StoreArg {
    pub fn resolve(&self) -> String {
        crate::config::resolve(
            self.store.clone(),
            crate::config::ENV_STORE,
            crate::config::DEFAULT_STORE,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkspaceKind {
    /// A Docker container per job (the default).
    Docker,
    /// A temporary directory on this host: no isolation, for machines without Docker.
    Local,
}

/// Runs the parsed command; the exit code follows DESIGN.md (0 / 1 / 2).
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => run::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Logs(a) => logs::run(a).await,
        Command::MockLlm(a) => mock_llm::run(a).await,
    }
}
