//! The command-line surface: clap definitions (doc comments are the help text) and
//! dispatch to one file per subcommand. Library code below knows nothing of clap.

pub mod cancel;
pub mod logs;
pub mod mock_llm;
pub mod progress;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod submit;
pub mod table;
pub mod worker;

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
    /// A fleet worker: consume jobs from RabbitMQ, run them, store the results.
    /// SIGTERM/SIGINT drains gracefully.
    Worker(worker::WorkerArgs),
    /// Validate, store and publish jobs (a job file, or one job with --task); prints
    /// the job ids and the batch id. With --wait, exit codes as `run`.
    Submit(submit::SubmitArgs),
    /// Show where a job, a batch, or the fleet stands.
    Status(status::StatusArgs),
    /// Cancel a queued or running job.
    Cancel(cancel::CancelArgs),
    /// Sweep the store once for stranded jobs: republish jobs queued with no
    /// message, fail running jobs whose worker is gone (what every worker's
    /// sweeper does now and then).
    Reconcile(reconcile::ReconcileArgs),
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

/// Where the broker is.
#[derive(Debug, Args, Clone)]
pub struct QueueArg {
    /// The queue: amqp://user:pass@host:port/vhost, or `memory` (embedded only)
    /// [env: FLEET_QUEUE] [default: amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
}

impl QueueArg {
    pub fn resolve(&self) -> String {
        crate::config::resolve(
            self.queue.clone(),
            crate::config::ENV_QUEUE,
            crate::config::DEFAULT_QUEUE,
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
        Command::Worker(a) => worker::run(a).await,
        Command::Submit(a) => submit::run(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Cancel(a) => cancel::run(a).await,
        Command::Reconcile(a) => reconcile::run(a).await,
        Command::Logs(a) => logs::run(a).await,
        Command::MockLlm(a) => mock_llm::run(a).await,
    }
}
