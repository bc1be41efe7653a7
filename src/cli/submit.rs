//! `fleet submit`: validate, store, publish. Everything is checked before anything is
//! sent; inputs are uploaded as `input.tar.gz`; a `queued` status, the input and
//! job.json are written, then `batches/<id>.json`, then the jobs are published
//! with confirms. `--wait` follows the batch to its end; exit codes as `fleet run`.
//!
//! Idempotent: run again with the same ids, a job already stored as the same job
//! is published again while it is still `queued` (its first publish may have
//! failed; a second message is harmless, the record decides) and skipped once it
//! runs or ended. A stored job that differs is an error, unless `--resubmit` asks
//! to replace a job that ended. When publishing fails the command exits 1 naming
//! the jobs not confirmed; running it again sends them.

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
use crate::job::{self, Input, JobResult, JobSpec, Outcome, State, StatusRecord};
use crate::queue::{JobMessage, Queue};
use crate::results::input::tar_gz_dir_to_file;
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
    /// Run again jobs whose ids already ended (any terminal state): their job.json
    /// is replaced, their status goes back to `queued` (history kept) and they are
    /// published. Without it a stored job is only published again while queued.
    #[arg(long)]
    pub resubmit: bool,
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
    let batch_id = format!("b-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    for j in &mut jobs {
        j.batch_id = Some(batch_id.clone());
    }
    let t0 = std::time::Instant::now();
    let stored = store_jobs(&store, jobs, a.resubmit).await?;
    let ids: Vec<String> = stored.iter().map(|s| s.spec.id.clone()).collect();
    // A submit run again with nothing new keeps the batch it made the first time.
    let earlier: Vec<Option<&String>> = stored
        .iter()
        .map(|s| s.spec.batch_id.as_ref())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let batch_id = match (stored.iter().all(|s| !s.created), &earlier[..]) {
        (true, [Some(b)]) => (*b).clone(),
        _ => {
            let batch = BatchRecord {
                batch_id: batch_id.clone(),
                submitted_at: Utc::now(),
                job_ids: ids.clone(),
            };
            store
                .put_json(&keys::batch(&batch_id), &batch)
                .await
                .context("writing the batch record")?;
            batch_id
        }
    };
    let msgs: Vec<JobMessage> = stored
        .iter()
        .filter(|s| s.publish)
        .map(|s| JobMessage {
            job_id: s.spec.id.clone(),
            priority: s.spec.priority,
            attempt: 0,
            enqueued_at: Utc::now(),
            body: Bytes::from(serde_json::to_vec(&s.spec).expect("jobs serialise")),
        })
        .collect();
    let skipped = stored.len() - msgs.len();
    let published = async {
        let queue = Queue::open(&a.queue.resolve(), config::amqp_options()).await?;
        let r = queue.publish_many(&msgs).await;
        Ok::<_, crate::queue::QueueError>((queue, r))
    }
    .await;
    let queue = match published {
        Ok((queue, Ok(()))) => queue,
        Ok((_, Err(e))) | Err(e) => {
            let names: Vec<&str> = msgs.iter().map(|m| m.job_id.as_str()).collect();
            eprintln!(
                "error: {} of {} jobs stored but not confirmed as published ({e}): {}",
                names.len(),
                ids.len(),
                names.join(", ")
            );
            eprintln!(
                "run the same command again to publish them (workers' sweepers also do, after FLEET_SWEEP_GRACE_SECS)"
            );
            return Ok(ExitCode::from(1));
        }
    };
    if skipped > 0 {
        eprintln!("{skipped} jobs already stored and started or ended: not published again");
    }
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

/// One job after the store phase: the job as stored, and whether to publish it.
struct Stored {
    spec: JobSpec,
    publish: bool,
    /// Written by this run (not found from an earlier one).
    created: bool,
}

/// Reserves each id (a `queued` status written only where none is), uploads the
/// input, writes job.json; in parallel. An id already stored is looked at instead
/// (see the module doc): the same job is published again while queued; another
/// job is an error naming it, unless `resubmit` and the stored one ended.
async fn store_jobs(
    store: &Store,
    jobs: Vec<JobSpec>,
    resubmit: bool,
) -> anyhow::Result<Vec<Stored>> {
    let store = Arc::new(store.clone());
    stream::iter(jobs.into_iter().map(|mut j| {
        let store = store.clone();
        async move {
            let key = JobKeys(&j.id);
            let path_input = match &j.input {
                Some(Input::Path { path }) => Some(path.clone()),
                _ => None,
            };
            if path_input.is_some() {
                j.input = Some(Input::StoreKey {
                    store_key: key.input(),
                });
            }
            let status = StatusRecord::queued(&j.id, j.batch_id.clone());
            let body = Bytes::from(serde_json::to_vec_pretty(&status).expect("records serialise"));
            let created = store.put_if_absent(&key.status(), body).await?;
            let mut reset = false;
            if !created {
                match existing(&store, &j, resubmit).await? {
                    Existing::Same(stored, publish) => {
                        return Ok(Stored {
                            spec: *stored,
                            publish,
                            created: false,
                        });
                    }
                    Existing::Unfinished => {}
                    Existing::Replace => reset = true,
                }
            }
            if let Some(path) = &path_input {
                // Packed to a temporary file and uploaded from it (multipart past
                // 8 MiB): an input of any size costs a buffer, not its size.
                let gz = tempfile::Builder::new()
                    .prefix("fleet-input-")
                    .suffix(".tar.gz")
                    .tempfile()
                    .context("creating a temporary file for the input")?;
                let (dir, dest) = (PathBuf::from(path), gz.path().to_path_buf());
                tokio::task::spawn_blocking(move || tar_gz_dir_to_file(&dir, &dest))
                    .await?
                    .with_context(|| format!("packing input {path}"))?;
                store.put_file(&key.input(), gz.path()).await?;
            }
            store.put_json(&key.job(), &j).await?;
            if reset {
                let batch = j.batch_id.clone();
                store
                    .update_status(&j.id, |s| {
                        if !s.state.is_terminal() {
                            return false;
                        }
                        s.attempt = 0;
                        s.owner = None;
                        s.error = None;
                        s.cancel_requested = false;
                        s.finished_at = None;
                        s.steps = 0;
                        s.cost_usd = 0.0;
                        s.batch_id = batch.clone();
                        s.transition(State::Queued, None, Some("resubmitted".into()));
                        true
                    })
                    .await?;
            }
            Ok::<Stored, anyhow::Error>(Stored {
                spec: j,
                publish: true,
                created,
            })
        }
    }))
    .buffered(PARALLEL)
    .try_collect()
    .await
}

enum Existing {
    /// The stored job is this one: (it, whether it still needs a message).
    Same(Box<JobSpec>, bool),
    /// Reserved by an earlier run that stopped before job.json: finish it.
    Unfinished,
    /// `--resubmit` of a job that ended: write it anew.
    Replace,
}

/// What to do with a job whose id is already stored.
async fn existing(store: &Store, j: &JobSpec, resubmit: bool) -> anyhow::Result<Existing> {
    let id = &j.id;
    let status = store
        .status(id)
        .await?
        .with_context(|| format!("job {id}: status record vanished"))?;
    let stored: Option<JobSpec> = match store.get(&JobKeys(id).job()).await? {
        None => None,
        Some(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| job::job_from_value(v, &job::ParseOptions::default()).ok()),
    };
    let Some(stored) = stored else {
        return if status.state == State::Queued {
            Ok(Existing::Unfinished)
        } else {
            Err(UsageError(format!(
                "job id {id:?} is in the store without a readable job.json ({})",
                status.state
            ))
            .into())
        };
    };
    let same = {
        let mut a = stored.clone();
        let mut b = j.clone();
        a.batch_id = None;
        b.batch_id = None;
        serde_json::to_value(&a).ok() == serde_json::to_value(&b).ok()
    };
    match (same, status.state) {
        (_, s) if resubmit && s.is_terminal() => Ok(Existing::Replace),
        (true, State::Queued) => Ok(Existing::Same(Box::new(stored), true)),
        (true, _) => Ok(Existing::Same(Box::new(stored), false)),
        (false, s) if s.is_terminal() => Err(UsageError(format!(
            "job id {id:?} already exists in the store as another job ({s}); choose another id, or --resubmit to replace it"
        ))
        .into()),
        (false, s) => Err(UsageError(format!(
            "job id {id:?} already exists in the store as another job, still {s}; choose another id"
        ))
        .into()),
    }
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
