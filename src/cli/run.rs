//! `fleet run JOBS`: the embedded pipeline with a progress display and a summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{StoreArg, UsageError, WorkspaceKind, progress::Board, table};
use crate::config::{self, RunSettings};
use crate::job::{self, Outcome};
use crate::results::webhook;
use crate::store::Store;
use crate::worker::{Services, Shutdown, embedded};
use crate::workspace::{self, docker::DockerBackend, local::LocalBackend};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file: a JSON array of jobs, or {"defaults": {…}, "jobs": […]}.
    pub jobs: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Jobs run at once [env: FLEET_CONCURRENCY] [default: 4]
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Where jobs run.
    #[arg(long, value_enum, default_value = "docker")]
    pub workspace: WorkspaceKind,
    /// Serve the scripted LLM from DIR in-process and point jobs without an
    /// `llm.base_url` at it (no API key needed).
    #[arg(long, value_name = "DIR")]
    pub mock_llm: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress display (it is also off when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// `trust`: the job file is yours, as is this environment (jobs may name any
    /// variable, endpoint and network). `worker`: apply the worker policy
    /// (FLEET_JOB_SECRETS, FLEET_LLM_ENDPOINTS, …), for a job file from elsewhere.
    #[arg(long, value_enum, default_value = "trust")]
    pub policy: PolicyMode,
}

/// Whether `fleet run` applies the worker policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    Trust,
    Worker,
}

pub fn concurrency(flag: Option<usize>) -> Result<usize, UsageError> {
    let n = match flag {
        Some(n) => n,
        None => match config::env(config::ENV_CONCURRENCY) {
            Some(v) => v
                .parse()
                .map_err(|_| UsageError(format!("FLEET_CONCURRENCY={v:?} is not a number")))?,
            None => 4,
        },
    };
    if n == 0 || n > 10_000 {
        return Err(UsageError(format!(
            "concurrency {n} must be between 1 and 10000"
        )));
    }
    Ok(n)
}

/// The workspace backend, connected; Docker's stale containers of this host removed.
pub async fn backend(
    kind: WorkspaceKind,
    scratch: &std::path::Path,
) -> anyhow::Result<workspace::Backend> {
    let b = match kind {
        WorkspaceKind::Docker => workspace::Backend::Docker(
            DockerBackend::connect(&config::hostname())
                .await
                .context("connecting to Docker (use --workspace local on a machine without it)")?,
        ),
        WorkspaceKind::Local => workspace::Backend::Local(LocalBackend::new(scratch.to_path_buf())),
    };
    match b.cleanup_stale().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed containers left by dead runs on this host"
        ),
        Err(e) => tracing::warn!(error = %e, "could not clean up stale containers"),
    }
    Ok(b)
}

/// The LLM client. Redirects are not followed: a job's requests (and its key) go
/// to the endpoint the policy allowed, never where that endpoint points.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let concurrency = concurrency(a.concurrency)?;
    let opts = job::ParseOptions {
        default_image: Some(config::default_image()),
        base_dir: PathBuf::new(),
    };
    let jobs = job::parse_job_file(&a.jobs, &opts).map_err(|e| UsageError(e.to_string()))?;
    let store_spec = a.store.resolve();
    let store = Store::open(&store_spec)
        .await
        .with_context(|| format!("opening the store {store_spec}"))?;

    let scratch = tempfile::Builder::new()
        .prefix("fleet-run-")
        .tempdir()
        .context("creating a scratch directory")?;
    let backend = backend(a.workspace, scratch.path()).await?;
    let mut settings = RunSettings::from_env(config::new_worker_id());
    settings.retry_delays = vec![Duration::from_secs(2), Duration::from_secs(10)];
    let _mock = match &a.mock_llm {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(
                    UsageError(format!("--mock-llm {}: not a directory", dir.display())).into(),
                );
            }
            let m =
                crate::mock_llm::MockLlm::start(dir.clone(), "127.0.0.1:0".parse().expect("addr"))
                    .await
                    .context("starting the scripted LLM")?;
            settings.llm_base_url = m.base_url();
            settings.mock_llm = true;
            Some(m)
        }
        None => None,
    };
    let policy = crate::policy::Policy::from_env(&settings.llm_base_url)
        .map_err(|e| UsageError(e.to_string()))?;
    let enforce_policy = a.policy == PolicyMode::Worker;
    let mut hooks = webhook::WebhookSettings::from_env();
    hooks.allow_private = !enforce_policy || policy.webhook_allow_private;
    let notifier = webhook::Notifier::new(
        webhook::http_client().context("building the webhook client")?,
        store.clone(),
        hooks,
    );
    let svc = Arc::new(Services {
        store,
        backend,
        http: http_client()?,
        settings,
        scratch: scratch.path().to_path_buf(),
        notifier: notifier.clone(),
        policy: Arc::new(policy),
        enforce_policy,
    });

    let show = !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let board = Arc::new(Board::new(jobs.len(), show));
    let shutdown = Shutdown::default();
    let sd = shutdown.clone();
    let board2 = board.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            board2.println("interrupted: cancelling running jobs and removing their workspaces…");
            sd.stop.cancel();
            sd.cancel.cancel();
        }
    });
    let refresher = show.then(|| super::progress::spawn_refresher(board.clone()));
    let results = embedded::run_batch(
        svc.clone(),
        &jobs,
        concurrency,
        Some(board.clone()),
        shutdown,
    )
    .await;
    if let Some(r) = refresher {
        r.abort();
    }
    board.finish();
    let results = results.context("reading results from the store")?;
    // Webhooks go out after results are stored; give them a moment before exiting.
    notifier.shutdown(Duration::from_secs(30)).await;

    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", table::results(&results));
        println!("results: {}", svc.store.locate("jobs/"));
    }
    let all_ok = results.iter().all(|r| r.outcome == Outcome::Succeeded);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
