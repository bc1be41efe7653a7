//! `fleet reconcile`: one sweep for stranded jobs, the same a worker makes now and
//! then (see `worker::sweep`): jobs `queued` past the grace period with no
//! message are published again; jobs `running` whose owner stayed silent through
//! the watch window, with no message left to take them over, are failed
//! (`worker_lost`). Prints what it did; exit 0, or 1 when the store or broker
//! could not be read.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{QueueArg, StoreArg};
use crate::config;
use crate::queue::Queue;
use crate::store::Store;
use crate::worker::lease::LeaseWatch;
use crate::worker::sweep::{self, SweepRules};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub queue: QueueArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// How long a job may sit `queued` (or `retrying`) with no message before it
    /// is published again [env: FLEET_SWEEP_GRACE_SECS] [default: 600]
    #[arg(long)]
    pub grace_secs: Option<f64>,
    /// How long to watch running jobs for a heartbeat before taking a silent owner
    /// for dead [default: the lease, FLEET_LEASE_SECS]
    #[arg(long)]
    pub watch_secs: Option<f64>,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let grace = match a.grace_secs {
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(
                super::UsageError(format!("--grace-secs {s}: expected seconds ≥ 0")).into(),
            );
        }
        None => config::env_secs(config::ENV_SWEEP_GRACE_SECS, 600.0).map_err(super::UsageError)?,
    };
    let settings = config::RunSettings::from_env(config::new_worker_id())?;
    let watch_for = match a.watch_secs {
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(
                super::UsageError(format!("--watch-secs {s}: expected seconds ≥ 0")).into(),
            );
        }
        None => settings.lease,
    };
    let spec = a.store.resolve();
    let store = Store::open(&spec)
        .await
        .with_context(|| format!("opening the store {spec}"))?;
    let queue = Queue::open(&a.queue.resolve(), config::amqp_options()?)
        .await
        .context("connecting to the broker")?;
    let rules = SweepRules {
        grace,
        silence: watch_for,
        worker_id: format!("reconcile-{}", settings.worker_id),
    };
    let watch = LeaseWatch::new(watch_for);
    // First look: sightings of the running jobs; then the sweep that acts.
    sweep::sweep_once(
        &store,
        &queue,
        &watch,
        &SweepRules {
            grace: Duration::MAX,
            ..rules.clone()
        },
    )
    .await
    .context("sweeping the store")?;
    tokio::time::sleep(watch_for).await;
    let report = sweep::sweep_once(&store, &queue, &watch, &rules)
        .await
        .context("sweeping the store")?;
    queue.close().await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for id in &report.republished {
            println!("republished {id}");
        }
        for id in &report.failed {
            println!("failed {id} (worker_lost)");
        }
        if let Some(why) = &report.held_back {
            eprintln!("queued jobs left alone: {why}");
        }
        eprintln!(
            "{} jobs seen, {} republished, {} failed",
            report.seen,
            report.republished.len(),
            report.failed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
