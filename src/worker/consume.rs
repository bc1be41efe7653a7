//! The consume loop: take deliveries while a slot is free, claim each job through
//! its status record, run it, store the outcome, then settle the message — ack,
//! retry later, dead-letter, or requeue on shutdown. Used by `fleet run` (memory
//! queue, local store) and `fleet worker` (RabbitMQ, S3) alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::runner::{self, AttemptEnd, JobControl, Services};
use crate::agent::{EventLog, Progress};
use crate::job::{self, ErrorInfo, JobResult, JobSpec, Outcome, Phase, State, StatusRecord};
use crate::queue::{Delivery, Queue};
use crate::store::{JobKeys, Store, StoreError};
use crate::telemetry::metrics;

/// Messages larger than this are dead-lettered unread.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Sees jobs start and finish (the progress display of `fleet run`).
pub trait Observer: Send + Sync {
    fn started(&self, job_id: &str, progress: Arc<Progress>);
    fn finished(&self, job_id: &str, result: &JobResult);
}

/// A worker: a queue, the shared services, a number of slots.
pub struct Worker {
    pub svc: Arc<Services>,
    pub queue: Queue,
    pub concurrency: usize,
    pub observer: Option<Arc<dyn Observer>>,
    /// Running jobs, for cancel messages.
    running: Arc<Mutex<HashMap<String, JobControl>>>,
}

/// How a worker is told to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking new deliveries.
    pub stop: CancellationToken,
    /// End running jobs as `cancelled` (Ctrl-C of `fleet run`).
    pub cancel: CancellationToken,
    /// Stop running jobs and requeue them (a worker's grace period ran out).
    pub abort: CancellationToken,
}

impl Worker {
    pub fn new(svc: Arc<Services>, queue: Queue, concurrency: usize) -> Worker {
        Worker {
            svc,
            queue,
            concurrency: concurrency.max(1),
            observer: None,
            running: Default::default(),
        }
    }

    /// Cancels a running job on this worker; false if it is not running here.
    pub fn cancel_job(&self, job_id: &str) -> bool {
        match self.running.lock().expect("running lock").get(job_id) {
            Some(ctl) => {
                ctl.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// A handle that can cancel running jobs while `run` is going.
    pub fn canceller(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let running = self.running.clone();
        move |id: &str| {
            running
                .lock()
                .expect("running lock")
                .get(id)
                .map(|c| c.cancel.cancel())
                .is_some()
        }
    }

    /// Consumes until the queue ends or `shutdown.stop` fires, then waits for the
    /// jobs in flight (which `shutdown.cancel`/`abort` can cut short).
    pub async fn run(&self, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        metrics().worker_slots.set(self.concurrency as i64);
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = shutdown.stop.cancelled() => break,
            };
            let delivery = tokio::select! {
                d = self.queue.next() => d,
                _ = shutdown.stop.cancelled() => break,
            };
            let Some(delivery) = delivery else { break };
            let ctl = JobControl {
                cancel: shutdown.cancel.child_token(),
                abort: shutdown.abort.child_token(),
            };
            let (svc, queue, observer, running) = (
                self.svc.clone(),
                self.queue.clone(),
                self.observer.clone(),
                self.running.clone(),
            );
            tracker.spawn(async move {
                handle(&svc, &queue, delivery, ctl, observer.as_deref(), &running).await;
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Reads a delivery's job, or says why it cannot be run.
///
/// A job from the broker (`from_broker`) needs an id, and may not name
/// `input.path`: that would be a directory on the worker's host (`fleet submit`
/// uploads it as `store_key`).
fn decode(d: &Delivery, from_broker: bool) -> Result<JobSpec, String> {
    if d.msg.body.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
            d.msg.body.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&d.msg.body).map_err(|e| format!("body is not a JSON job: {e}"))?;
    let has_id = value.get("id").is_some_and(|v| v.is_string());
    let spec = job::job_from_value(value, &job::ParseOptions::default())
        .map_err(|(field, message)| format!("invalid job: {field}: {message}"))?;
    if from_broker && !has_id && d.msg.job_id.is_empty() {
        // Parsing would give it a new UUID on every delivery: each retry or
        // redelivery would be another job.
        return Err(
            "invalid job: id: a queued job needs an id (the job's `id` or the \
                    message id)"
                .into(),
        );
    }
    if !d.msg.job_id.is_empty() && spec.id != d.msg.job_id {
        return Err(format!(
            "message id {:?} does not match the job id {:?}",
            d.msg.job_id, spec.id
        ));
    }
    if from_broker && matches!(spec.input, Some(job::Input::Path { .. })) {
        return Err(
            "invalid job: input.path: a queued job cannot read the worker's \
                    files; upload the input (fleet submit stores it as input.store_key)"
                .into(),
        );
    }
    Ok(spec)
}

/// The longest rejection reason kept: it travels in a dead letter's headers (an
/// AMQP header frame holds 128 KiB) and in the status record, and a hostile
/// message can make the parser quote a huge value.
const MAX_REASON_CHARS: usize = 1000;

fn clip_reason(reason: String) -> String {
    if reason.chars().count() <= MAX_REASON_CHARS {
        return reason;
    }
    let head: String = reason.chars().take(MAX_REASON_CHARS).collect();
    format!("{head}… ({} bytes in all)", reason.len())
}

async fn handle(
    svc: &Services,
    queue: &Queue,
    d: Delivery,
    ctl: JobControl,
    observer: Option<&dyn Observer>,
    running: &Mutex<HashMap<String, JobControl>>,
) {
    let spec = match decode(&d, matches!(queue, Queue::Amqp(_))) {
        Ok(s) => s,
        Err(reason) => {
            let id = d.msg.job_id.clone();
            return reject(svc, queue, d, &id, "invalid_job", &clip_reason(reason)).await;
        }
    };
    // The worker policy, before a claim: a refused job gets no workspace and no secret.
    if let Err(v) = super::admit::admit(svc, &spec).await {
        let id = spec.id.clone();
        return reject(
            svc,
            queue,
            d,
            &id,
            crate::policy::POLICY_KIND,
            &v.to_string(),
        )
        .await;
    }
    let attempt = d.msg.attempt + 1;
    let span = info_span!("job", job_id = %spec.id, attempt);
    async {
        // Claim through the status record: only one live run per job.
        let claim = claim(&svc.store, &spec, attempt, &svc.settings).await;
        let rec = match claim {
            Err(e) => {
                warn!(error = %e, "cannot claim; retrying later");
                settle(
                    queue
                        .retry(d, attempt - 1, svc.settings.retry_delay(1))
                        .await,
                );
                return;
            }
            Ok(Claim::Skip(why)) => {
                info!(why, "skipping delivery");
                settle(queue.ack(d).await);
                return;
            }
            Ok(Claim::Defer) => {
                info!("job is live on another worker; deferring");
                settle(queue.retry(d, attempt - 1, svc.settings.lease).await);
                return;
            }
            Ok(Claim::Cancelled) => {
                let r = empty_result(
                    &spec,
                    attempt,
                    Outcome::Cancelled,
                    None,
                    &svc.settings.worker_id,
                );
                if finish(svc, &spec, &r, observer).await.is_ok() {
                    settle(queue.ack(d).await);
                } else {
                    settle(
                        queue
                            .retry(d, attempt - 1, svc.settings.retry_delay(1))
                            .await,
                    );
                }
                return;
            }
            Ok(Claim::Run(rec)) => rec,
        };
        let attempt = rec.attempt;
        if taken_over(&rec) {
            // Its worker died mid-job and left its container: sweep what dead
            // workers of this host left (cleanup_stale spares live owners).
            let backend = svc.backend.clone();
            tokio::spawn(async move {
                match backend.cleanup_stale().await {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "removed containers of dead workers"),
                    Err(e) => warn!(error = %e, "could not remove containers of dead workers"),
                }
            });
        }
        svc.notifier
            .job_started(&spec, attempt, &svc.settings.worker_id);
        // From this message's publish (a retry's wait counts from its re-publish).
        let wait = (Utc::now() - d.msg.enqueued_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics().queue_wait.observe(wait);
        metrics().jobs_started.inc();
        metrics().jobs_running.inc();
        running
            .lock()
            .expect("running lock")
            .insert(spec.id.clone(), ctl.clone());

        let end = match EventLog::create(&runner::events_path(svc, &spec.id, attempt)) {
            Err(e) => {
                let e = ErrorInfo {
                    kind: "scratch_io".into(),
                    phase: Phase::Agent,
                    retryable: true,
                    message: e.to_string(),
                };
                AttemptEnd::Retry(empty_result(
                    &spec,
                    attempt,
                    Outcome::Failed,
                    Some(e),
                    &svc.settings.worker_id,
                ))
            }
            Ok(events) => {
                if let Some(o) = observer {
                    o.started(&spec.id, events.progress.clone());
                }
                let beat = heartbeat(
                    svc,
                    &spec.id,
                    attempt,
                    events.progress.clone(),
                    ctl.cancel.clone(),
                );
                let end = runner::run_attempt(svc, &spec, attempt, &ctl, &events).await;
                beat.cancel();
                end
            }
        };
        let _ = std::fs::remove_file(runner::events_path(svc, &spec.id, attempt));
        running.lock().expect("running lock").remove(&spec.id);
        metrics().jobs_running.dec();

        match end {
            AttemptEnd::Final(result) => {
                if finish(svc, &spec, &result, observer).await.is_ok() {
                    settle(queue.ack(d).await);
                } else {
                    settle(
                        queue
                            .retry(d, attempt, svc.settings.retry_delay(attempt))
                            .await,
                    );
                }
            }
            AttemptEnd::Retry(result) if attempt < svc.settings.max_attempts => {
                let e = result.error.clone();
                let reason = e
                    .as_ref()
                    .map(|e| retry_reason(e.phase))
                    .unwrap_or("worker_lost");
                metrics().job_retries.with_label_values(&[reason]).inc();
                warn!(error = ?e.as_ref().map(|e| &e.message), "infrastructure fault; retrying");
                let _ = svc
                    .store
                    .update_status(&spec.id, |s| {
                        s.error = e.clone();
                        s.transition(State::Retrying, None, e.as_ref().map(|e| e.kind.clone()));
                        true
                    })
                    .await;
                settle(
                    queue
                        .retry(d, attempt, svc.settings.retry_delay(attempt))
                        .await,
                );
            }
            AttemptEnd::Retry(result) => {
                let reason = result
                    .error
                    .as_ref()
                    .map(|e| e.kind.clone())
                    .unwrap_or_default();
                if finish(svc, &spec, &result, observer).await.is_ok() {
                    settle(
                        queue
                            .dead_letter(d, &format!("gave up after {attempt} attempts: {reason}"))
                            .await,
                    );
                } else {
                    settle(
                        queue
                            .retry(d, attempt, svc.settings.retry_delay(attempt))
                            .await,
                    );
                }
            }
            AttemptEnd::Aborted => {
                let _ = svc
                    .store
                    .update_status(&spec.id, |s| {
                        s.attempt = attempt - 1;
                        s.transition(
                            State::Queued,
                            None,
                            Some("requeued at worker shutdown".into()),
                        );
                        true
                    })
                    .await;
                settle(queue.requeue(d).await);
            }
        }
    }
    .instrument(span)
    .await
}

fn retry_reason(phase: Phase) -> &'static str {
    match phase {
        Phase::Workspace | Phase::Input | Phase::Collect => "workspace",
        Phase::Store => "store",
        Phase::Llm | Phase::Agent => "llm",
        Phase::Queue | Phase::Claim => "broker",
        Phase::Validate => "workspace",
    }
}

fn settle(r: Result<(), crate::queue::QueueError>) {
    if let Err(e) = r {
        // The broker redelivers an unsettled message; the status record makes that safe.
        warn!(error = %e, "settling the delivery failed");
    }
}

enum Claim {
    Run(StatusRecord),
    Skip(&'static str),
    Defer,
    Cancelled,
}

async fn claim(
    store: &Store,
    spec: &JobSpec,
    attempt: u32,
    s: &crate::config::RunSettings,
) -> Result<Claim, StoreError> {
    let key = JobKeys(&spec.id);
    if store.status(&spec.id).await?.is_none() {
        // Published by someone who did not write the records first.
        store.put_json(&key.job(), spec).await?;
        store
            .put_json(
                &key.status(),
                &StatusRecord::queued(&spec.id, spec.batch_id.clone()),
            )
            .await?;
    }
    let (me, lease) = (s.worker_id.clone(), s.lease.as_secs());
    let won = AtomicBool::new(false);
    let cancelled = AtomicBool::new(false);
    let rec = store
        .update_status(&spec.id, |r| {
            won.store(false, Ordering::SeqCst);
            if r.state.is_terminal() || r.is_live(Utc::now()) {
                return false;
            }
            if r.cancel_requested {
                cancelled.store(true, Ordering::SeqCst);
                return false;
            }
            // A stale `running` record: its worker died mid-job; this is a new attempt.
            let taken_over = r.state == State::Running;
            r.attempt = attempt.max(r.attempt + u32::from(taken_over));
            r.lease_secs = lease;
            r.error = None;
            let note =
                taken_over.then(|| "taken over from a worker whose lease expired".to_string());
            r.transition(State::Running, Some(&me), note);
            won.store(true, Ordering::SeqCst);
            true
        })
        .await?;
    let Some(rec) = rec else {
        return Ok(Claim::Defer);
    };
    Ok(if won.load(Ordering::SeqCst) {
        if taken_over(&rec) {
            metrics()
                .job_retries
                .with_label_values(&["worker_lost"])
                .inc();
        }
        Claim::Run(rec)
    } else if cancelled.load(Ordering::SeqCst) {
        Claim::Cancelled
    } else if rec.state.is_terminal() {
        Claim::Skip("already terminal")
    } else {
        Claim::Defer
    })
}

/// A claimed record whose previous state was `running`: a run taken over from a
/// worker whose lease expired.
fn taken_over(rec: &StatusRecord) -> bool {
    rec.history
        .iter()
        .rev()
        .nth(1)
        .is_some_and(|t| t.state == State::Running)
}

/// Writes result.json then the terminal status; tells the observer.
async fn finish(
    svc: &Services,
    spec: &JobSpec,
    r: &JobResult,
    observer: Option<&dyn Observer>,
) -> Result<(), StoreError> {
    let key = JobKeys(&spec.id);
    svc.store.put_json(&key.result(), r).await?;
    let me = svc.settings.worker_id.clone();
    svc.store
        .update_status(&spec.id, |s| {
            s.attempt = r.attempt;
            s.error = r.error.clone();
            s.steps = r.steps;
            s.cost_usd = r.cost_usd;
            s.transition(r.outcome.state(), Some(&me), None);
            true
        })
        .await?;
    // After results and the terminal status are stored; returns at once.
    svc.notifier.job_finished(spec, r);
    metrics()
        .jobs_finished
        .with_label_values(&[r.outcome.as_str()])
        .inc();
    metrics()
        .job_duration
        .with_label_values(&[r.outcome.as_str()])
        .observe(r.duration_secs);
    if let Some(o) = observer {
        o.finished(&spec.id, r);
    }
    Ok(())
}

fn empty_result(
    spec: &JobSpec,
    attempt: u32,
    outcome: Outcome,
    error: Option<ErrorInfo>,
    worker: &str,
) -> JobResult {
    JobResult::unrun(&spec.id, outcome, attempt, error, Some(worker))
}

/// An invalid message, or a job the policy refuses (`kind`): dead-lettered with
/// the reason; `rejected` where an id is readable.
async fn reject(svc: &Services, queue: &Queue, d: Delivery, id: &str, kind: &str, reason: &str) {
    warn!(message_id = %d.msg.job_id, kind, reason, "rejecting a job");
    let id = id.to_string();
    if job::parse::valid_id(&id) {
        let e = ErrorInfo {
            kind: kind.into(),
            phase: Phase::Validate,
            retryable: false,
            message: reason.into(),
        };
        let key = JobKeys(&id);
        let rec = match svc.store.status(&id).await {
            Ok(Some(r)) if r.state.is_terminal() => None,
            Ok(Some(r)) => Some(r),
            _ => Some(StatusRecord::queued(&id, None)),
        };
        if let Some(mut rec) = rec {
            rec.error = Some(e.clone());
            rec.transition(
                State::Rejected,
                Some(&svc.settings.worker_id),
                Some(reason.to_string()),
            );
            let r = JobResult::unrun(
                &id,
                Outcome::Rejected,
                rec.attempt,
                Some(e),
                Some(&svc.settings.worker_id),
            );
            let _ = svc.store.put_json(&key.result(), &r).await;
            let _ = svc.store.put_json(&key.status(), &rec).await;
            metrics()
                .jobs_finished
                .with_label_values(&["rejected"])
                .inc();
        }
    }
    settle(queue.dead_letter(d, reason).await);
}

/// Keeps the lease fresh while a job runs; notices cancel requests in the record.
fn heartbeat(
    svc: &Services,
    job_id: &str,
    attempt: u32,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let (store, id, me, period) = (
        svc.store.clone(),
        job_id.to_string(),
        svc.settings.worker_id.clone(),
        svc.settings.heartbeat,
    );
    let events_path = runner::events_path(svc, job_id, attempt);
    let stop2 = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        let mut uploaded = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop2.cancelled() => return,
            }
            let beat = store
                .update_status(&id, |s| {
                    if s.state != State::Running || s.worker.as_deref() != Some(&me) {
                        return false;
                    }
                    s.heartbeat = Some(Utc::now());
                    s.steps = progress.steps();
                    s.cost_usd = progress.cost();
                    true
                })
                .await;
            match beat {
                Ok(Some(s)) if s.cancel_requested => cancel.cancel(),
                Err(e) => warn!(error = %e, "heartbeat failed"),
                _ => {}
            }
            // Live events for `fleet logs --follow`.
            let size = std::fs::metadata(&events_path)
                .map(|m| m.len())
                .unwrap_or(0);
            if size != uploaded && !stop2.is_cancelled() {
                if store
                    .put_file(&JobKeys(&id).events(), &events_path)
                    .await
                    .is_ok()
                {
                    uploaded = size;
                }
            }
        }
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reason_is_clipped_on_a_char_boundary() {
        let short = "invalid job: id: \"..\"".to_string();
        assert_eq!(clip_reason(short.clone()), short);
        let huge = format!("invalid job: image: {:?}", "é".repeat(300_000));
        let clipped = clip_reason(huge.clone());
        assert!(
            clipped.len() < 2 * MAX_REASON_CHARS + 64,
            "{}",
            clipped.len()
        );
        assert!(clipped.ends_with(&format!("({} bytes in all)", huge.len())));
    }
}
