//! `fleet submit`: validate, store, publish. Everything is checked before anything is
//! sent; inputs are uploaded as `input.tar.gz`; job.json and a `queued` status are
//! written, then the jobs are published with confirms, then `batches/<id>.json`.
//! `--wait` follows the batch to its end; exit codes as `fleet run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use clap::Args;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{QueueArg, StoreArg, UsageError};
use crate::config;
use crate::job::{self, Input, JobResult, JobSpec, Outcome, StatusRecord};
use crate::queue::{JobMessage, Queue};
use crate::results::input::tar_gz_dir;
use crate::store::{JobKeys, Store, StoreError, keys};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (or use --task for a single job).
    #[arg(required_unless_present = "task", conflicts_with = "task")]
    pub jobs: Option<PathBuf>,
    /// A single job's instruction.
    #[arg(long)]
    pub task: Option<String>,
    /// --task: the workspace image [default: FLEET_DEFAULT_IMAGE]
    #[arg(long, requires = "task")]
    pub image: Option<String>,
    /// --task: a directory uploaded as the job's input.
    #[arg(long, requires = "task")]
    pub input: Option<PathBuf>,
    /// --task: the model [default: LLM_MODEL]
    #[arg(long, requires = "task")]
    pub model: Option<String>,
    /// --task: the job id [default: a UUID]
    #[arg(long, requires = "task")]
    pub id: Option<String>,
    /// --task: priority 0–9.
    #[arg(long, requires = "task")]
    pub priority: Option<u8>,
    /// --task: a label KEY=VALUE (repeatable).
    #[arg(long = "label", requires = "task", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub queue: QueueArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Follow the jobs to a terminal state; exit 0 only if all succeeded.
    #[arg(long)]
    pub wait: bool,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Check the jobs against the worker policy of this environment before
    /// anything is sent (the workers enforce it anyway; this fails early).
    #[arg(long)]
    pub policy_check: bool,
}

/// batches/<id>.json
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch_id: String,
    pub submitted_at: chrono::DateTime<Utc>,
    pub job_ids: Vec<String>,
}

/// Stores and writes in flight at once.
const PARALLEL: usize = 64;

fn task_job(a: &SubmitArgs) -> Result<Vec<JobSpec>, UsageError> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--label {l:?}: expected KEY=VALUE")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let mut job = json!({"task": a.task, "labels": labels});
    if let Some(i) = &a.image {
        job["image"] = json!(i);
    }
    if let Some(i) = &a.id {
        job["id"] = json!(i);
    }
    if let Some(p) = a.priority {
        job["priority"] = json!(p);
    }
    if let Some(m) = &a.model {
        job["llm"] = json!({"model": m});
    }
    if let Some(d) = &a.input {
        job["input"] = json!({"path": d.display().to_string()});
    }
    let opts = job::ParseOptions {
        default_image: Some(config::default_image()),
        base_dir: PathBuf::from("."),
    };
    let spec = job::job_from_value(job, &opts)
        .map_err(|(f, m)| UsageError(format!("--task job: {f}: {m}")))?;
    Ok(vec![spec])
}

pub async fn run(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut jobs = match &a.jobs {
        Some(path) => {
            let opts = job::ParseOptions {
                default_image: Some(config::default_image()),
                base_dir: PathBuf::new(),
            };
            job::parse_job_file(path, &opts).map_err(|e| UsageError(e.to_string()))?
        }
        None => task_job(&a)?,
    };
    if a.policy_check {
        let base = config::RunSettings::from_env(String::new()).llm_base_url;
        let policy =
            crate::policy::Policy::from_env(&base).map_err(|e| UsageError(e.to_string()))?;
        for (i, j) in jobs.iter().enumerate() {
            if let Err(v) = policy.check(j).await {
                return Err(UsageError(format!(
                    "job {i} (id {:?}): refused by the worker policy: {v}",
                    j.id
                ))
                .into());
            }
        }
    }
    let store_spec = a.store.resolve();
    let store = Store::open(&store_spec)
        .await
        .with_context(|| format!("opening the store {store_spec}"))?;
    let queue = Queue::open(&a.queue.resolve(), config::amqp_options())
        .await
        .context("connecting to the broker")?;
    let batch_id = format!("b-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    for j in &mut jobs {
        j.batch_id = Some(batch_id.clone());
    }
    let t0 = std::time::Instant::now();
    let jobs = store_jobs(&store, jobs).await?;
    let msgs: Vec<JobMessage> = jobs
        .iter()
        .map(|j| JobMessage {
            job_id: j.id.clone(),
            priority: j.priority,
            attempt: 0,
            enqueued_at: Utc::now(),
            body: Bytes::from(serde_json::to_vec(j).expect("jobs serialise")),
        })
        .collect();
    queue
        .publish_many(&msgs)
        .await
        .context("publishing the jobs")?;
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let batch = BatchRecord {
        batch_id: batch_id.clone(),
        submitted_at: Utc::now(),
        job_ids: ids.clone(),
    };
    store
        .put_json(&keys::batch(&batch_id), &batch)
        .await
        .context("writing the batch record")?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json && !a.wait {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"batch_id": batch_id, "job_ids": ids}))?
        );
    } else if !a.json {
        for id in &ids {
            println!("{id}");
        }
        eprintln!(
            "batch {batch_id}: {} jobs submitted in {secs:.2}s",
            ids.len()
        );
    }
    queue.close().await;
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let results = wait(&store, &ids).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"batch_id": batch_id, "results": results}))?
        );
    } else {
        print!("{}", super::table::results(&results));
    }
    Ok(if results.iter().all(|r| r.outcome == Outcome::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Uploads inputs and writes job.json + queued status for every job, in parallel.
/// A job id already in the store is an error (nothing of that job is overwritten).
async fn store_jobs(store: &Store, jobs: Vec<JobSpec>) -> anyhow::Result<Vec<JobSpec>> {
    let store = Arc::new(store.clone());
    stream::iter(jobs.into_iter().map(|mut j| {
        let store = store.clone();
        async move {
            let key = JobKeys(&j.id);
            let status = StatusRecord::queued(&j.id, j.batch_id.clone());
            let body = Bytes::from(serde_json::to_vec_pretty(&status).expect("records serialise"));
            if !store.put_if_absent(&key.status(), body).await? {
                return Err(anyhow::Error::from(UsageError(format!(
                    "job id {:?} already exists in the store; choose another id",
                    j.id
                ))));
            }
            if let Some(Input::Path { path }) = &j.input {
                let dir = PathBuf::from(path);
                let gz = tokio::task::spawn_blocking(move || tar_gz_dir(&dir))
                    .await?
                    .with_context(|| format!("packing input {path}"))?;
                store.put(&key.input(), Bytes::from(gz)).await?;
                j.input = Some(Input::StoreKey {
                    store_key: key.input(),
                });
            }
            store.put_json(&key.job(), &j).await?;
            Ok::<JobSpec, anyhow::Error>(j)
        }
    }))
    .buffered(PARALLEL)
    .try_collect()
    .await
}

/// Polls the status records until every job is terminal, with a progress bar.
pub async fn wait(store: &Store, ids: &[String]) -> anyhow::Result<Vec<JobResult>> {
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    if !live {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} jobs  {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let mut pending: Vec<String> = ids.to_vec();
    let mut done: BTreeMap<String, JobResult> = BTreeMap::new();
    while !pending.is_empty() {
        let states: Vec<(String, Option<StatusRecord>)> = stream::iter(pending.iter().cloned())
            .map(|id| {
                let store = store.clone();
                async move {
                    let s = store.status(&id).await?;
                    Ok::<_, StoreError>((id, s))
                }
            })
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        let mut running = 0;
        for (id, s) in states {
            match s {
                Some(s) if s.state.is_terminal() => {
                    if let Some(r) = store.get_json::<JobResult>(&JobKeys(&id).result()).await? {
                        if !live {
                            eprintln!("{id} {}", r.outcome);
                        }
                        done.insert(id, r);
                        bar.inc(1);
                    }
                }
                Some(s) if s.state == crate::job::State::Running => running += 1,
                _ => {}
            }
        }
        pending.retain(|id| !done.contains_key(id));
        bar.set_message(format!("{running} running"));
        if !pending.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => {
                    bar.finish_and_clear();
                    anyhow::bail!("interrupted while waiting; the jobs go on (fleet status --batch)");
                }
            }
        }
    }
    bar.finish_and_clear();
    Ok(ids.iter().filter_map(|id| done.remove(id)).collect())
}
