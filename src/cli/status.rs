//! `fleet status`: one job, one batch, or the whole store — tables for people,
//! `--json` for scripts, `--watch` to follow.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{StoreArg, UsageError, table};
use crate::job::{JobResult, State, StatusRecord};
use crate::store::{JobKeys, Store, keys};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A job id; without it, the whole store (or the batch given by --batch).
    pub job_id: Option<String>,
    /// A batch id printed by `fleet submit`.
    #[arg(long, conflicts_with = "job_id")]
    pub batch: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Show the broker's queues too (fleet view): depth, consumers, dead letters.
    #[arg(long)]
    pub fleet: bool,
    #[command(flatten)]
    pub queue: super::QueueArg,
    /// JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Refresh every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// A job as `status` shows it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub status: StatusRecord,
    pub result: Option<JobResult>,
    pub location: String,
}

/// Many jobs: counts by state, cost, durations, the ones that did not succeed.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub jobs: usize,
    pub by_state: BTreeMap<String, usize>,
    pub total_cost_usd: f64,
    pub duration_p50_secs: Option<f64>,
    pub duration_p95_secs: Option<f64>,
    pub not_succeeded: Vec<(String, String)>,
}

pub async fn job_view(store: &Store, id: &str) -> anyhow::Result<Option<JobView>> {
    let Some(status) = store.status(id).await? else {
        return Ok(None);
    };
    let result = store.get_json::<JobResult>(&JobKeys(id).result()).await?;
    Ok(Some(JobView {
        status,
        result,
        location: store.locate(&JobKeys(id).dir()),
    }))
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

pub async fn summary(store: &Store, ids: &[String]) -> anyhow::Result<Summary> {
    let mut by_state: BTreeMap<String, usize> =
        State::ALL.iter().map(|s| (s.to_string(), 0)).collect();
    let mut durations = Vec::new();
    let mut cost = 0.0;
    let mut bad = Vec::new();
    for id in ids {
        let Some(s) = store.status(id).await? else {
            continue;
        };
        *by_state.entry(s.state.to_string()).or_default() += 1;
        cost += s.cost_usd;
        if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
            durations.push((b - a).num_milliseconds() as f64 / 1000.0);
        }
        if s.state.is_terminal() && s.state != State::Succeeded {
            bad.push((id.clone(), s.state.to_string()));
        }
    }
    by_state.retain(|_, n| *n > 0);
    durations.sort_by(|a, b| a.total_cmp(b));
    Ok(Summary {
        jobs: ids.len(),
        by_state,
        total_cost_usd: cost,
        duration_p50_secs: percentile(&durations, 0.5),
        duration_p95_secs: percentile(&durations, 0.95),
        not_succeeded: bad,
    })
}

/// Job ids in the store (from their status records).
pub async fn all_job_ids(store: &Store) -> anyhow::Result<Vec<String>> {
    let keys = store.list(keys::JOBS_PREFIX).await?;
    Ok(keys
        .iter()
        .filter_map(|k| {
            k.strip_prefix(keys::JOBS_PREFIX)?
                .strip_suffix("/status.json")
                .map(str::to_string)
        })
        .collect())
}

pub async fn batch_ids(store: &Store, batch: &str) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Batch {
        job_ids: Vec<String>,
    }
    let b: Batch = store
        .get_json(&keys::batch(batch))
        .await?
        .ok_or_else(|| UsageError(format!("batch {batch:?} not found in the store")))?;
    Ok(b.job_ids)
}

/// The broker's queues (depth and consumers), or why they could not be read.
async fn queue_stats(spec: &str) -> Result<Vec<crate::queue::QueueStat>, String> {
    let opts = crate::queue::AmqpOptions {
        connect_timeout: Duration::from_secs(3),
        ..crate::config::amqp_options().map_err(|e| e.to_string())?
    };
    let q = crate::queue::Queue::open(spec, opts)
        .await
        .map_err(|e| e.to_string())?;
    let stats = q.queue_stats().await.map_err(|e| e.to_string());
    q.close().await;
    stats
}

fn render_job(v: &JobView) -> String {
    let s = &v.status;
    let mut rows = vec![
        vec!["job".to_string(), s.job_id.clone()],
        vec!["state".into(), s.state.to_string()],
        vec!["attempt".into(), s.attempt.to_string()],
        vec![
            "worker".into(),
            s.worker.clone().unwrap_or_else(|| "-".into()),
        ],
        vec!["steps".into(), s.steps.to_string()],
        vec!["cost".into(), format!("${:.4}", s.cost_usd)],
    ];
    if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
        rows.push(vec![
            "duration".into(),
            table::duration((b - a).num_milliseconds() as f64 / 1000.0),
        ]);
    } else if let Some(a) = s.started_at {
        rows.push(vec![
            "running for".into(),
            table::duration((chrono::Utc::now() - a).num_milliseconds() as f64 / 1000.0),
        ]);
    }
    if let Some(r) = &v.result {
        rows.push(vec!["outcome".into(), r.outcome.to_string()]);
        if let Some(p) = &r.stuck_pattern {
            rows.push(vec!["stuck pattern".into(), p.clone()]);
        }
        if let Some(m) = &r.final_message {
            rows.push(vec!["final message".into(), table::first_line(m, 100)]);
        }
    }
    if let Some(e) = &s.error {
        rows.push(vec![
            "error".into(),
            format!(
                "{} ({:?}, retryable: {}): {}",
                e.kind,
                e.phase,
                e.retryable,
                table::first_line(&e.message, 120)
            ),
        ]);
    }
    for w in &s.webhooks {
        rows.push(vec![
            "webhook".into(),
            format!(
                "{} {} after {} attempt(s)",
                w.url,
                if w.delivered {
                    "delivered"
                } else {
                    "NOT delivered"
                },
                w.attempts
            ),
        ]);
    }
    rows.push(vec!["results".into(), v.location.clone()]);
    table::render(&["", ""], &rows)
        .lines()
        .skip(1)
        .map(|l| format!("{l}\n"))
        .collect()
}

fn render_summary(title: &str, s: &Summary) -> String {
    let mut out = format!("{title}: {} jobs, cost ${:.4}", s.jobs, s.total_cost_usd);
    if let (Some(p50), Some(p95)) = (s.duration_p50_secs, s.duration_p95_secs) {
        out.push_str(&format!(
            ", duration p50 {} p95 {}",
            table::duration(p50),
            table::duration(p95)
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .by_state
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push_str(&table::render(&["STATE", "JOBS"], &rows));
    if !s.not_succeeded.is_empty() {
        out.push_str("\nnot succeeded:\n");
        for (id, st) in s.not_succeeded.iter().take(50) {
            out.push_str(&format!("  {id}  {st}\n"));
        }
    }
    out
}

async fn once(a: &StatusArgs, store: &Store) -> anyhow::Result<Result<String, UsageError>> {
    if let Some(id) = &a.job_id {
        let Some(v) = job_view(store, id).await? else {
            return Ok(Err(UsageError(format!(
                "job {id:?} not found in {}",
                store.locate("jobs/")
            ))));
        };
        return Ok(Ok(if a.json {
            serde_json::to_string_pretty(&v)?
        } else {
            render_job(&v)
        }));
    }
    let (title, ids) = match &a.batch {
        Some(b) => (format!("batch {b}"), batch_ids(store, b).await?),
        None => ("store".to_string(), all_job_ids(store).await?),
    };
    let s = summary(store, &ids).await?;
    let queues = if a.fleet && a.batch.is_none() {
        Some(queue_stats(&a.queue.resolve()).await)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(q) = &queues {
            v["queues"] = match q {
                Ok(q) => serde_json::to_value(q)?,
                Err(e) => serde_json::json!({"error": e}),
            };
        }
        return Ok(Ok(serde_json::to_string_pretty(&v)?));
    }
    let mut text = render_summary(&title, &s);
    match queues {
        Some(Ok(q)) => {
            let rows: Vec<Vec<String>> = q
                .iter()
                .map(|q| {
                    vec![
                        q.name.clone(),
                        q.messages.to_string(),
                        q.consumers.to_string(),
                    ]
                })
                .collect();
            text.push('\n');
            text.push_str(&table::render(&["QUEUE", "READY", "CONSUMERS"], &rows));
        }
        Some(Err(e)) => text.push_str(&format!("\nbroker: {e}\n")),
        None => {}
    }
    Ok(Ok(text))
}

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let spec = a.store.resolve();
    let store = Store::open(&spec)
        .await
        .with_context(|| format!("opening the store {spec}"))?;
    loop {
        let text = once(&a, &store).await?.map_err(anyhow::Error::from)?;
        if a.watch {
            print!("\x1b[2J\x1b[H{text}");
        } else {
            println!("{}", text.trim_end());
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
