//! The sweeper: finds jobs that no message will ever move again and moves them.
//! Run by every worker now and then (rate-limited, jittered) and by
//! `fleet reconcile`.
//!
//! - A job `queued` (or `retrying`) for longer than the grace period while the
//!   job queues hold no ready message lost its message (a submit whose publish
//!   failed, a retry whose re-publish was lost): it is published again. A second
//!   copy would be harmless — the record decides, a message is only a pointer.
//! - A job `running` whose owner this sweeper saw silent (the same owner token and
//!   heartbeat sequence) for the whole silence window, while the job queues hold
//!   no ready message, has a dead owner and no message left to take it over: it
//!   is failed with `error.kind = "worker_lost"`.
//!
//! Every change is a compare-and-swap on the record as it was seen, so a sweeper
//! racing a worker (or another sweeper) changes nothing that moved meanwhile.

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tracing::{info, warn};

use super::fence::Fence;
use super::lease::LeaseWatch;
use crate::job::{ErrorInfo, JobResult, Outcome, Owner, Phase, State, StatusRecord};
use crate::queue::{JobMessage, Queue, QueueError};
use crate::store::{JobKeys, Store, StoreError, keys};

/// Records read at once.
const PARALLEL: usize = 16;

/// What one sweep did.
#[derive(Debug, Default, Serialize)]
pub struct SweepReport {
    pub seen: usize,
    pub republished: Vec<String>,
    pub failed: Vec<String>,
    /// Why queued jobs were left alone this time (ready messages in the queues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// How a sweep judges.
#[derive(Debug, Clone)]
pub struct SweepRules {
    /// A `queued`/`retrying` record untouched this long (by its own timestamps)
    /// has lost its message.
    pub grace: Duration,
    /// A running job's owner silent this long on the sweeper's clock is dead and
    /// no message will take it over.
    pub silence: Duration,
    /// Who writes the sweeper's changes (for the records).
    pub worker_id: String,
}

/// One sweep over every job in the store.
pub async fn sweep_once(
    store: &Store,
    queue: &Queue,
    watch: &LeaseWatch,
    rules: &SweepRules,
) -> Result<SweepReport, SweepError> {
    let ready: u32 = queue
        .queue_stats()
        .await?
        .iter()
        .filter(|s| !s.name.ends_with("fleet.dead"))
        .map(|s| s.messages)
        .sum();
    let ids: Vec<String> = store
        .list(keys::JOBS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(keys::JOBS_PREFIX)?
                .strip_suffix("/status.json")
                .map(str::to_string)
        })
        .collect();
    let report = Mutex::new(SweepReport {
        seen: ids.len(),
        held_back: (ready > 0).then(|| format!("{ready} messages ready in the job queues")),
        ..Default::default()
    });
    stream::iter(ids)
        .for_each_concurrent(PARALLEL, |id| {
            let report = &report;
            async move {
                match sweep_job(store, queue, watch, rules, &id, ready == 0).await {
                    Ok(Some(Swept::Republished)) => {
                        report.lock().expect("report").republished.push(id)
                    }
                    Ok(Some(Swept::Failed)) => report.lock().expect("report").failed.push(id),
                    Ok(None) => {}
                    Err(e) => warn!(job_id = %id, error = %e, "sweeping a job failed"),
                }
            }
        })
        .await;
    let mut r = report.into_inner().expect("report");
    r.republished.sort();
    r.failed.sort();
    if !r.republished.is_empty() || !r.failed.is_empty() {
        info!(
            republished = r.republished.len(),
            failed = r.failed.len(),
            "sweep moved stranded jobs"
        );
    }
    Ok(r)
}

enum Swept {
    Republished,
    Failed,
}

async fn sweep_job(
    store: &Store,
    queue: &Queue,
    watch: &LeaseWatch,
    rules: &SweepRules,
    id: &str,
    queues_empty: bool,
) -> Result<Option<Swept>, SweepError> {
    let Some(rec) = store.status(id).await? else {
        return Ok(None);
    };
    if let Some(mark) = rec.liveness_mark() {
        let silent = watch.silent_for(id, &mark);
        if silent < rules.silence || !queues_empty {
            return Ok(None);
        }
        return fail_lost(store, rules, &rec, mark).await;
    }
    let idle = (Utc::now() - rec.updated_at).to_std().unwrap_or_default();
    if !matches!(rec.state, State::Queued | State::Retrying) || idle < rules.grace || !queues_empty
    {
        return Ok(None);
    }
    let Some(body) = store.get(&JobKeys(id).job()).await? else {
        return Ok(None); // a submit still writing it
    };
    // Touch the record first (only if unchanged), so the next sweep waits a
    // grace period again instead of publishing another copy.
    let seen_at = rec.updated_at;
    let touched = store
        .update_status(id, |r| {
            if r.updated_at != seen_at || !matches!(r.state, State::Queued | State::Retrying) {
                return false;
            }
            r.updated_at = Utc::now();
            true
        })
        .await?;
    if touched.is_none_or(|r| r.updated_at == seen_at) {
        return Ok(None);
    }
    let priority = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("priority").and_then(|p| p.as_u64()))
        .unwrap_or(0)
        .min(9) as u8;
    queue
        .publish(JobMessage {
            job_id: id.to_string(),
            priority,
            attempt: rec.attempt,
            enqueued_at: Utc::now(),
            body,
        })
        .await?;
    info!(job_id = %id, state = %rec.state, "republished a job that had no message");
    Ok(Some(Swept::Republished))
}

/// Fails a running job whose owner is dead, if the record still shows `mark`.
async fn fail_lost(
    store: &Store,
    rules: &SweepRules,
    rec: &StatusRecord,
    mark: (Owner, u64),
) -> Result<Option<Swept>, SweepError> {
    let me = Owner::new(&rules.worker_id, rec.attempt);
    let took = store
        .update_status(&rec.job_id, |r| {
            if r.liveness_mark().as_ref() != Some(&mark) {
                return false;
            }
            r.owner = Some(me.clone());
            r.heartbeat_seq += 1;
            true
        })
        .await?;
    if !took.is_some_and(|r| r.owned_by(&me)) {
        return Ok(None);
    }
    let fence = Fence::new(store.clone(), &rec.job_id, me, rules.silence);
    let e = ErrorInfo {
        kind: "worker_lost".into(),
        phase: Phase::Claim,
        retryable: false,
        message: format!(
            "its worker ({}) stopped heartbeating and no message was left to take the job over",
            mark.0.worker
        ),
    };
    let r = JobResult::unrun(
        &rec.job_id,
        Outcome::Failed,
        rec.attempt,
        Some(e.clone()),
        Some(&rules.worker_id),
    );
    // Every terminal job has the same files: empty ones where the dead run left none.
    let key = JobKeys(&rec.job_id);
    for k in [key.patch(), key.events()] {
        if store.get(&k).await?.is_none() {
            fence.put(&k, bytes::Bytes::new()).await?;
        }
    }
    fence.put_json(&key.result(), &r).await?;
    let who = rules.worker_id.clone();
    fence
        .update(|s| {
            s.error = Some(e.clone());
            s.transition(
                State::Failed,
                Some(&who),
                Some("failed by the sweeper: owner dead, no message".into()),
            );
            true
        })
        .await?;
    warn!(job_id = %rec.job_id, "failed a running job whose worker was lost");
    Ok(Some(Swept::Failed))
}
