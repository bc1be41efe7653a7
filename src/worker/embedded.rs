//! `fleet run`: the whole pipeline in one process — the jobs are stored and queued
//! on the in-memory queue, a [`Worker`] with N slots drains it into the store, and
//! the results are read back for the summary. Same code path as a fleet worker
//! after the queue and store boundaries.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use super::consume::{Observer, Shutdown, Worker};
use super::runner::Services;
use crate::job::{JobResult, JobSpec, Outcome, State, StatusRecord};
use crate::queue::memory::MemoryQueue;
use crate::queue::{JobMessage, Queue};
use crate::store::{JobKeys, StoreError};

/// Stores every job as queued and publishes it. Returns the queue, closed so the
/// worker ends when the batch is settled.
pub async fn enqueue(svc: &Services, jobs: &[JobSpec]) -> Result<MemoryQueue, StoreError> {
    let q = MemoryQueue::new();
    for spec in jobs {
        let key = JobKeys(&spec.id);
        let body = serde_json::to_vec_pretty(spec).expect("jobs serialise");
        svc.store.put(&key.job(), Bytes::from(body.clone())).await?;
        svc.store
            .put_json(
                &key.status(),
                &StatusRecord::queued(&spec.id, spec.batch_id.clone()),
            )
            .await?;
        q.publish(JobMessage {
            job_id: spec.id.clone(),
            priority: spec.priority,
            attempt: 0,
            enqueued_at: Utc::now(),
            body: Bytes::from(body),
        })
        .expect("fresh queue is open");
    }
    q.close();
    Ok(q)
}

/// Runs the batch to the end (or until `shutdown`), then returns each job's result
/// in the order given. Jobs that never started after a Ctrl-C are recorded as
/// cancelled.
pub async fn run_batch(
    svc: Arc<Services>,
    jobs: &[JobSpec],
    concurrency: usize,
    observer: Option<Arc<dyn Observer>>,
    shutdown: Shutdown,
) -> Result<Vec<JobResult>, StoreError> {
    let q = enqueue(&svc, jobs).await?;
    let mut worker = Worker::new(svc.clone(), Queue::Memory(q.clone()), concurrency);
    worker.observer = observer.clone();
    worker.run(shutdown).await;

    let mut results = Vec::with_capacity(jobs.len());
    for spec in jobs {
        let key = JobKeys(&spec.id);
        let result = match svc.store.get_json::<JobResult>(&key.result()).await? {
            Some(r) => r,
            None => {
                // Never started (interrupted): cancelled, with a record that says so.
                let r = super::records::store_unrun(&svc.store, &spec.id, Outcome::Cancelled, 0)
                    .await?;
                let _ = svc
                    .store
                    .update_status(&spec.id, |s| {
                        if s.state.is_terminal() {
                            return false;
                        }
                        s.transition(
                            State::Cancelled,
                            None,
                            Some("interrupted before it ran".into()),
                        );
                        true
                    })
                    .await;
                if let Some(o) = &observer {
                    o.finished(&spec.id, &r);
                }
                r
            }
        };
        results.push(result);
    }
    Ok(results)
}
