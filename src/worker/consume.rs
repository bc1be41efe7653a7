//! The consume loop: take deliveries while a slot is free, resolve each to the
//! stored job it points at, claim it through its status record, run it under
//! the run's fence, then apply the one settlement its end maps to — ack, retry
//! later, dead-letter, or requeue on shutdown. Used by `fleet run` (memory queue,
//! local store) and `fleet worker` (RabbitMQ, S3) alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::claim::{self, Claim};
use super::fence::{self, Fence};
use super::lease::LeaseWatch;
use super::message::{self, Pointer};
use super::runner::{self, AttemptEnd, JobControl, Services};
use super::settle::{self, Commit, Settle, Settlement};
use crate::agent::{EventLog, Progress};
use crate::job::{ErrorInfo, JobResult, JobSpec, Outcome, Owner, Phase};
use crate::queue::{Delivery, Queue};
use crate::store::JobKeys;
use crate::telemetry::metrics;

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
    /// This worker's sightings of other workers' runs (liveness on our clock).
    pub watch: Arc<LeaseWatch>,
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
            watch: Arc::new(LeaseWatch::new(svc.settings.lease)),
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

    /// Deliveries this worker holds at most: its slots, and as many again as
    /// `FLEET_PREPARE_AHEAD` lets wait for one with their workspaces started.
    /// The broker's prefetch is this number.
    pub fn holds(concurrency: usize, ahead: usize) -> usize {
        concurrency.max(1) + ahead
    }

    /// Consumes until the queue ends or `shutdown.stop` fires, then waits for the
    /// jobs in flight (which `shutdown.cancel`/`abort` can cut short).
    ///
    /// Pipelining: a delivery taken while every slot is busy has its workspace
    /// started at once (`runner::prepare`) and then waits for a slot, so a slot
    /// that frees starts work on a running container. At most
    /// `FLEET_PREPARE_AHEAD` deliveries wait so; their jobs are claimed only
    /// once they have a slot, and on shutdown they are requeued unrun.
    pub async fn run(&self, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let held = Arc::new(Semaphore::new(Worker::holds(
            self.concurrency,
            self.svc.settings.prepare_ahead,
        )));
        metrics().worker_slots.set(self.concurrency as i64);
        let tracker = TaskTracker::new();
        loop {
            let permit = tokio::select! {
                p = held.clone().acquire_owned() => p.expect("semaphore open"),
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
            let (svc, queue, observer, running, watch) = (
                self.svc.clone(),
                self.queue.clone(),
                self.observer.clone(),
                self.running.clone(),
                self.watch.clone(),
            );
            let slot = Slot {
                slots: slots.clone(),
                stop: shutdown.stop.clone(),
            };
            tracker.spawn(async move {
                let o = observer.as_deref();
                handle(&svc, &queue, delivery, ctl, o, &running, &watch, slot).await;
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// A delivery's way to a slot of the worker.
struct Slot {
    slots: Arc<Semaphore>,
    /// The worker stops taking deliveries: one still waiting is requeued.
    stop: CancellationToken,
}

/// One delivery, from pointer to settlement: resolve the job it names, wait for
/// a slot (its workspace started meanwhile when every slot is busy), claim it,
/// run the attempt under the run's fence — each step ends in a [`Settlement`]
/// (the decision as data) — then apply it in one place.
#[allow(clippy::too_many_arguments)]
async fn handle(
    svc: &Services,
    queue: &Queue,
    d: Delivery,
    ctl: JobControl,
    observer: Option<&dyn Observer>,
    running: &Mutex<HashMap<String, JobControl>>,
    watch: &LeaseWatch,
    slot: Slot,
) {
    let from_broker = matches!(queue, Queue::Amqp(_));
    let later = Settle::Retry {
        attempt: d.msg.attempt,
        delay: svc.settings.retry_delay(1),
    };
    let pointer = message::resolve(&svc.store, &d, from_broker, &svc.settings.worker_id).await;
    let spec = match pointer {
        Ok(Pointer::Job(spec)) => *spec,
        other => {
            let s = match other {
                Ok(Pointer::Invalid(reason)) => {
                    warn!(message_id = %d.msg.job_id, reason, "rejecting an invalid message");
                    Settle::DeadLetter(reason)
                }
                Ok(_) => {
                    info!(message_id = %d.msg.job_id, "the job's records are not all stored yet; later");
                    later
                }
                Err(e) => {
                    warn!(message_id = %d.msg.job_id, error = %e, "cannot read the job; retrying later");
                    later
                }
            };
            let s = Settlement::settle(s);
            return settle::apply(svc, queue, d, None, None, observer, s).await;
        }
    };
    let span = info_span!("job", job_id = %spec.id, attempt = tracing::field::Empty);
    async {
        // The worker policy, before anything runs: a refused job gets no
        // workspace, no secret and no request sent on its behalf.
        let refusal = super::admit::admit(svc, &spec).await.err();
        let (s, fence) = match refusal {
            Some(v) => refuse(svc, &spec, v, later).await,
            None => {
                let (permit, mut prepared) = match slot.slots.clone().try_acquire_owned() {
                    Ok(p) => (p, None),
                    Err(_) => {
                        let attempt = d.msg.attempt.max(1);
                        let prepared = runner::prepare(svc, &spec, attempt).await;
                        tokio::select! {
                            p = slot.slots.clone().acquire_owned() => (p.expect("semaphore open"), prepared),
                            _ = slot.stop.cancelled() => {
                                info!("the worker is stopping; requeueing a job that waited for a slot");
                                if let Some(p) = prepared {
                                    destroy(p.ws).await;
                                }
                                let s = Settlement::settle(Settle::Requeue);
                                return settle::apply(svc, queue, d, None, None, observer, s).await;
                            }
                        }
                    }
                };
                let r = run_job(svc, &spec, &d, ctl, observer, running, watch, later, &mut prepared)
                    .await;
                // A claim that did not lead to a run leaves the workspace unused.
                if let Some(p) = prepared {
                    destroy(p.ws).await;
                }
                drop(permit);
                r
            }
        };
        settle::apply(svc, queue, d, Some(&spec), fence.as_ref(), observer, s).await
    }
    .instrument(span)
    .await
}

/// Claims the job and runs its attempt: how the delivery should be settled, and
/// the run's fence when a run holds the job (its commit goes through it).
#[allow(clippy::too_many_arguments)]
async fn run_job(
    svc: &Services,
    spec: &JobSpec,
    d: &Delivery,
    ctl: JobControl,
    observer: Option<&dyn Observer>,
    running: &Mutex<HashMap<String, JobControl>>,
    watch: &LeaseWatch,
    later: Settle,
    prepared: &mut Option<runner::Prepared>,
) -> (Settlement, Option<Fence>) {
    let claimed = claim::claim(&svc.store, &spec.id, &svc.settings, watch).await;
    let (owner, taken_over) = match claimed {
        Err(e) => {
            warn!(error = %e, "cannot claim; retrying later");
            return (Settlement::settle(later), None);
        }
        Ok(Claim::Skip(why)) => {
            info!(why, "skipping delivery");
            return (Settlement::settle(Settle::Ack), None);
        }
        Ok(Claim::Defer) => {
            info!("job is live on another worker; deferring");
            let s = Settle::Retry {
                attempt: d.msg.attempt,
                delay: svc.settings.lease,
            };
            return (Settlement::settle(s), None);
        }
        Ok(Claim::Cancelled { owner, attempt }) => {
            tracing::Span::current().record("attempt", attempt);
            let me = Some(svc.settings.worker_id.as_str());
            let r = JobResult::unrun(&spec.id, Outcome::Cancelled, attempt, None, me);
            return unrun(svc, spec, owner, r, Settle::Ack).await;
        }
        Ok(Claim::Exhausted { owner, attempt }) => {
            tracing::Span::current().record("attempt", attempt);
            warn!(attempt, "its worker was lost on every attempt; giving up");
            remove_dead_workers_containers(svc);
            let e = ErrorInfo {
                kind: "worker_lost".into(),
                phase: Phase::Claim,
                retryable: false,
                message: format!(
                    "the worker running it was lost on each of its {attempt} attempts"
                ),
            };
            let me = Some(svc.settings.worker_id.as_str());
            let r = JobResult::unrun(&spec.id, Outcome::Failed, attempt, Some(e), me);
            let dead = Settle::DeadLetter(format!("gave up after {attempt} attempts: worker_lost"));
            return unrun(svc, spec, owner, r, dead).await;
        }
        Ok(Claim::Run { owner, taken_over }) => (owner, taken_over),
    };
    let attempt = owner.attempt;
    tracing::Span::current().record("attempt", attempt);
    let fence = Fence::new(svc.store.clone(), &spec.id, owner, svc.settings.lease);
    if taken_over {
        metrics()
            .job_retries
            .with_label_values(&["worker_lost"])
            .inc();
        remove_dead_workers_containers(svc);
    }
    svc.notifier
        .job_started(spec, attempt, &svc.settings.worker_id);
    // From this message's publish (a retry's wait counts from its re-publish).
    let wait = (Utc::now() - d.msg.enqueued_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics().queue_wait.observe(wait);
    metrics().jobs_started.inc();
    metrics().jobs_running.inc();
    running
        .lock()
        .expect("running lock")
        .insert(spec.id.clone(), ctl.clone());

    let events_path = runner::events_path(svc, &spec.id, attempt);
    let end = match EventLog::create(&events_path) {
        Err(e) => {
            let e = ErrorInfo {
                kind: "scratch_io".into(),
                phase: Phase::Agent,
                retryable: true,
                message: e.to_string(),
            };
            AttemptEnd::Retry(JobResult::unrun(
                &spec.id,
                Outcome::Failed,
                attempt,
                Some(e),
                Some(&svc.settings.worker_id),
            ))
        }
        Ok(events) => {
            if let Some(o) = observer {
                o.started(&spec.id, events.progress.clone());
            }
            let period = svc.settings.heartbeat;
            let beat = fence::heartbeat(
                &fence,
                period,
                svc.settings.lease / 3,
                events.progress.clone(),
                ctl.cancel.clone(),
            );
            let live = fence::live_log(&fence, events_path.clone(), period);
            let end =
                runner::run_attempt(svc, spec, attempt, &ctl, &events, &fence, prepared.take())
                    .await;
            beat.cancel();
            live.cancel();
            end
        }
    };
    let _ = std::fs::remove_file(&events_path);
    running.lock().expect("running lock").remove(&spec.id);
    metrics().jobs_running.dec();

    let s = settle::decide(
        end,
        attempt,
        svc.settings.max_attempts,
        svc.settings.retry_delay(attempt),
    );
    if let Commit::Retrying(e) = &s.commit {
        let reason = e
            .as_ref()
            .map(|e| retry_reason(e.phase))
            .unwrap_or("worker_lost");
        metrics().job_retries.with_label_values(&[reason]).inc();
        warn!(error = ?e.as_ref().map(|e| &e.message), "infrastructure fault; retrying");
    }
    (s, Some(fence))
}

/// Ends a job the worker policy refuses as `rejected` (`policy`), straight from
/// where it stands, through an owner token like every other write: a job that
/// ended already, or that a live run holds, is left alone.
async fn refuse(
    svc: &Services,
    spec: &JobSpec,
    v: crate::policy::Violation,
    later: Settle,
) -> (Settlement, Option<Fence>) {
    let reason = v.to_string();
    warn!(reason, "the job breaks the worker policy; rejecting it");
    match claim::refuse(&svc.store, &spec.id, &svc.settings).await {
        Err(e) => {
            warn!(error = %e, "cannot record the refusal; retrying later");
            (Settlement::settle(later), None)
        }
        Ok(None) => (Settlement::settle(Settle::Ack), None),
        Ok(Some(owner)) => {
            let e = ErrorInfo {
                kind: crate::policy::POLICY_KIND.into(),
                phase: Phase::Validate,
                retryable: false,
                message: reason.clone(),
            };
            let me = Some(svc.settings.worker_id.as_str());
            let r = JobResult::unrun(&spec.id, Outcome::Rejected, owner.attempt, Some(e), me);
            unrun(svc, spec, owner, r, Settle::DeadLetter(reason)).await
        }
    }
}

/// Ends a job that did not run (cancelled while queued, out of attempts): empty
/// patch and event log where none are stored; the result and terminal status are
/// the settlement's commit.
async fn unrun(
    svc: &Services,
    spec: &JobSpec,
    owner: Owner,
    r: JobResult,
    then: Settle,
) -> (Settlement, Option<Fence>) {
    let fence = Fence::new(svc.store.clone(), &spec.id, owner, svc.settings.lease);
    let key = JobKeys(&spec.id);
    for k in [key.patch(), key.events()] {
        if matches!(svc.store.get(&k).await, Ok(None)) {
            let _ = fence.put(&k, bytes::Bytes::new()).await;
        }
    }
    let s = Settlement {
        commit: Commit::Final(r),
        settle: then,
    };
    (s, Some(fence))
}

async fn destroy(ws: crate::workspace::Workspace) {
    if let Err(e) = ws.destroy().await {
        warn!(error = %e, "could not remove a workspace started ahead");
    }
}

/// A job whose worker died mid-job: sweep the containers dead workers of this
/// host left (cleanup_stale spares live owners), in the background.
fn remove_dead_workers_containers(svc: &Services) {
    let backend = svc.backend.clone();
    tokio::spawn(async move {
        match backend.cleanup_stale().await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "removed containers of dead workers"),
            Err(e) => warn!(error = %e, "could not remove containers of dead workers"),
        }
    });
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
