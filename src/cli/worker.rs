//! `fleet worker`: consume jobs from RabbitMQ, run them, store results in the store
//! (S3 or a directory shared by the workers). SIGTERM/SIGINT drains: stop taking
//! jobs, let running ones finish within `--grace-secs`, then stop the rest, remove
//! their containers and requeue them.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use super::{
    QueueArg, StoreArg, UsageError, WorkspaceKind,
    run::{backend, concurrency, http_client},
};
use crate::config::{self, RunSettings};
use crate::policy::Policy;
use crate::queue::{AmqpOptions, ControlMsg, Queue};
use crate::results::webhook;
use crate::store::Store;
use crate::telemetry::metrics;
use crate::worker::{Services, Shutdown, Worker, sweep};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub queue: QueueArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Jobs run at once [env: FLEET_CONCURRENCY] [default: 4]. The broker prefetch
    /// is this plus FLEET_PREPARE_AHEAD (default 2): deliveries waiting for a
    /// slot, their workspaces already started.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Address for /metrics, /healthz and /readyz [env: FLEET_METRICS_ADDR] [default: 127.0.0.1:9464]
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// After SIGTERM, how long running jobs may take to finish before they are
    /// stopped and requeued.
    #[arg(long, default_value_t = 600)]
    pub grace_secs: u64,
    /// Where jobs run.
    #[arg(long, value_enum, default_value = "docker")]
    pub workspace: WorkspaceKind,
    /// Also send a `job.started` webhook when a run starts [env: FLEET_WEBHOOK_STARTED]
    #[arg(long, env = "FLEET_WEBHOOK_STARTED")]
    pub webhook_started: bool,
    /// Use quorum queues (HA clusters) instead of classic queues with priorities.
    #[arg(long)]
    pub quorum: bool,
    /// Print the worker policy this environment gives (FLEET_JOB_SECRETS,
    /// FLEET_LLM_ENDPOINTS, FLEET_JOB_NETWORKS, the FLEET_MAX_* ceilings, …) and exit.
    #[arg(long)]
    pub print_policy: bool,
}

pub async fn run(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    // Resolved first: a bad policy variable stops the worker before it connects.
    let llm_base_url = RunSettings::from_env(String::new())?.llm_base_url;
    let policy = Policy::from_env(&llm_base_url).map_err(|e| UsageError(e.to_string()))?;
    if a.print_policy {
        print!("{}", policy.describe());
        return Ok(ExitCode::SUCCESS);
    }
    let n = concurrency(a.concurrency)?;
    let sweep_every = config::env_secs(config::ENV_SWEEP_SECS, 300.0).map_err(UsageError)?;
    let sweep_grace = config::env_secs(config::ENV_SWEEP_GRACE_SECS, 600.0).map_err(UsageError)?;
    let metrics_addr = config::resolve(
        a.metrics_addr.clone(),
        config::ENV_METRICS_ADDR,
        "127.0.0.1:9464",
    );
    let metrics_addr: SocketAddr = metrics_addr.parse().map_err(|e| {
        UsageError(format!(
            "--metrics-addr (or FLEET_METRICS_ADDR) {metrics_addr:?}: {e}"
        ))
    })?;
    let queue_spec = a.queue.resolve();
    if queue_spec == "memory" {
        return Err(UsageError(
            "a worker needs a broker: --queue amqp://… (memory is for `fleet run`)".into(),
        )
        .into());
    }
    // Every setting is read before anything is connected: a bad value fails at once.
    let worker_id = config::new_worker_id();
    let settings = RunSettings::from_env(worker_id.clone())?;
    let amqp = config::amqp_options()?;
    let pull = config::image_pull()?;
    let store_spec = a.store.resolve();
    let store = Store::open(&store_spec)
        .await
        .with_context(|| format!("opening the store {store_spec}"))?;
    // Refuse a store on which two workers could both claim one job.
    store
        .check_conditional_writes(&worker_id)
        .await
        .with_context(|| format!("checking the store {store_spec}"))?;
    let mut opts = AmqpOptions {
        prefetch: Worker::holds(n, settings.prepare_ahead).min(u16::MAX as usize) as u16,
        consume: true,
        control: true,
        ..amqp
    };
    if a.quorum {
        opts.queue_kind = crate::queue::QueueKind::Quorum;
    }
    let queue = Queue::open(&queue_spec, opts)
        .await
        .context("connecting to the broker")?;
    let scratch = tempfile::Builder::new()
        .prefix("fleet-worker-")
        .tempdir()
        .context("creating a scratch directory")?;
    let backend = backend(a.workspace, scratch.path(), pull).await?;
    let mut hooks = webhook::WebhookSettings::from_env();
    hooks.send_started = a.webhook_started;
    hooks.allow_private = policy.webhook_allow_private;
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
        enforce_policy: true,
    });

    let shutdown = Shutdown::default();
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server =
        crate::telemetry::server::serve(metrics_addr, readiness(&svc, &queue), server_stop.clone())
            .await
            .with_context(|| format!("serving metrics on {metrics_addr}"))?;
    let server = server.local_addr();
    info!(worker = %worker_id, concurrency = n, metrics = %server, "worker started");
    eprintln!("fleet worker {worker_id}: {n} slots, metrics on http://{server}/metrics");

    let worker = Worker::new(svc.clone(), queue.clone(), n);
    let cancel = worker.canceller();
    let mut control = queue.subscribe_control();
    let watch = tokio::spawn(async move {
        loop {
            match control.recv().await {
                Ok(ControlMsg::Cancel(id)) => {
                    if cancel(&id) {
                        info!(job_id = %id, "cancel requested");
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            }
        }
    });
    let stats = spawn_queue_stats(queue.clone());
    let sweep = spawn_stale_sweep(svc.backend.clone());
    let rules = sweep::SweepRules {
        grace: sweep_grace,
        silence: sweep_grace,
        worker_id: worker_id.clone(),
    };
    let job_sweep = spawn_job_sweep(
        svc.clone(),
        queue.clone(),
        worker.watch.clone(),
        rules,
        sweep_every,
    );
    let grace = Duration::from_secs(a.grace_secs);
    let drain = async {
        wait_for_signal().await;
        eprintln!(
            "draining: no new jobs; running jobs get {}s to finish",
            grace.as_secs()
        );
        shutdown.stop.cancel();
        queue.stop_consuming().await;
        tokio::select! {
            _ = tokio::time::sleep(grace) => eprintln!("grace period over: stopping and requeueing running jobs"),
            _ = wait_for_signal() => eprintln!("second signal: stopping and requeueing running jobs"),
        }
        shutdown.abort.cancel();
        std::future::pending::<()>().await
    };
    // The drain future never ends by itself: the worker's end ends both.
    tokio::select! {
        _ = worker.run(shutdown.clone()) => {}
        _ = drain => {}
    }
    notifier.shutdown(Duration::from_secs(30)).await;
    watch.abort();
    stats.abort();
    sweep.abort();
    job_sweep.abort();
    shutdown.abort.cancel();
    queue.close().await;
    server_stop.cancel();
    eprintln!("fleet worker {worker_id}: stopped");
    Ok(ExitCode::SUCCESS)
}

fn readiness(svc: &Arc<Services>, queue: &Queue) -> crate::telemetry::server::Readiness {
    let (s1, s2, q) = (svc.clone(), svc.clone(), queue.clone());
    let conditional = Arc::new(CachedCheck::new(svc.clone()));
    crate::telemetry::server::Readiness::new()
        .check("broker", move || {
            let q = q.clone();
            async move { q.queue_stats().await.map(|_| ()) }
        })
        .check("store", move || {
            let s = s1.clone();
            async move { s.store.ping().await }
        })
        .check("workspace", move || {
            let s = s2.clone();
            async move { s.backend.ping().await }
        })
        .check("store_conditional_writes", move || {
            let c = conditional.clone();
            async move { c.get().await }
        })
}

/// How long a store self-check result stands in for a new one: probes come every
/// few seconds, the check costs five store calls.
const SELF_CHECK_TTL: Duration = Duration::from_secs(15);

/// The store self-check behind `/readyz`, re-run at most every [`SELF_CHECK_TTL`].
struct CachedCheck {
    svc: Arc<Services>,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl CachedCheck {
    fn new(svc: Arc<Services>) -> CachedCheck {
        CachedCheck {
            svc,
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < SELF_CHECK_TTL
        {
            return r.clone();
        }
        let r = self
            .svc
            .store
            .check_conditional_writes(&self.svc.settings.worker_id)
            .await
            .map_err(|e| e.to_string());
        *last = Some((std::time::Instant::now(), r.clone()));
        r
    }
}

/// Exports queue depth and consumers so backlog shows without the management plugin.
fn spawn_queue_stats(queue: Queue) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match queue.queue_stats().await {
                Ok(stats) => {
                    for s in stats {
                        metrics()
                            .queue_messages
                            .with_label_values(&[&s.name])
                            .set(s.messages as f64);
                        metrics()
                            .queue_consumers
                            .with_label_values(&[&s.name])
                            .set(s.consumers as f64);
                    }
                }
                Err(e) => warn!(error = %e, "reading queue stats"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

/// How often a worker removes the containers that dead workers of its host left
/// (a takeover sweeps at once; this catches jobs taken over on other hosts).
const STALE_SWEEP: Duration = Duration::from_secs(60);

fn spawn_stale_sweep(backend: crate::workspace::Backend) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(STALE_SWEEP).await;
            match backend.cleanup_stale().await {
                Ok(0) => {}
                Ok(n) => info!(removed = n, "removed containers of dead workers"),
                Err(e) => warn!(error = %e, "sweeping containers of dead workers"),
            }
        }
    })
}

/// Sweeps the store for stranded jobs every `every` (±50 % jitter, so a fleet's
/// workers spread out; 0 turns it off). Each sweep is bounded by `every`.
fn spawn_job_sweep(
    svc: Arc<Services>,
    queue: Queue,
    watch: Arc<crate::worker::lease::LeaseWatch>,
    rules: sweep::SweepRules,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        loop {
            let pause = every.mul_f64(0.5 + rand::random::<f64>());
            tokio::time::sleep(pause).await;
            let run = sweep::sweep_once(&svc.store, &queue, &watch, &rules);
            match tokio::time::timeout(every, run).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "sweeping for stranded jobs failed"),
                Err(_) => warn!("a sweep for stranded jobs took longer than its period"),
            }
        }
    })
}

/// SIGTERM or SIGINT (Ctrl-C), whichever comes first.
pub(super) async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
