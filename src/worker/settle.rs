//! How a delivery ends, as data: [`Settlement`] says which records to commit and
//! how to settle the message; [`decide`] maps an attempt's end to one; [`apply`]
//! is the one place that carries one out. Every record write of a run goes
//! through its [`Fence`], so a run that lost its job commits nothing, sends no
//! webhook and leaves the message to the job's owner.

use std::time::Duration;

use tracing::{info, warn};

use super::consume::Observer;
use super::fence::Fence;
use super::runner::{AttemptEnd, Services};
use crate::job::{ErrorInfo, JobResult, JobSpec, Outcome, State};
use crate::queue::{Delivery, Queue};
use crate::store::{JobKeys, StoreError};
use crate::telemetry::metrics;

/// What to write before the message is settled.
#[derive(Debug)]
pub enum Commit {
    Nothing,
    /// result.json, then the terminal status; then the webhook and metrics.
    Final(JobResult),
    /// `retrying`, with the fault.
    Retrying(Option<ErrorInfo>),
    /// Back to `queued` (worker shutdown before the run could finish).
    Requeued,
}

/// What happens to the message once the commit is stored.
#[derive(Debug, PartialEq)]
pub enum Settle {
    Ack,
    Retry { attempt: u32, delay: Duration },
    DeadLetter(String),
    Requeue,
}

#[derive(Debug)]
pub struct Settlement {
    pub commit: Commit,
    pub settle: Settle,
}

impl Settlement {
    pub fn settle(settle: Settle) -> Settlement {
        Settlement {
            commit: Commit::Nothing,
            settle,
        }
    }
}

/// The settlement of a run's end.
pub fn decide(
    end: AttemptEnd,
    attempt: u32,
    max_attempts: u32,
    retry_delay: Duration,
) -> Settlement {
    match end {
        AttemptEnd::Final(r) => Settlement {
            commit: Commit::Final(r),
            settle: Settle::Ack,
        },
        AttemptEnd::Retry(r) if attempt < max_attempts => Settlement {
            commit: Commit::Retrying(r.error),
            settle: Settle::Retry {
                attempt,
                delay: retry_delay,
            },
        },
        AttemptEnd::Retry(r) => {
            let kind = r.error.as_ref().map(|e| e.kind.clone()).unwrap_or_default();
            Settlement {
                commit: Commit::Final(r),
                settle: Settle::DeadLetter(format!("gave up after {attempt} attempts: {kind}")),
            }
        }
        AttemptEnd::Aborted => Settlement {
            commit: Commit::Requeued,
            settle: Settle::Requeue,
        },
        // Another run holds the job: it has a message of its own (or a sweeper
        // ended it); this copy is done.
        AttemptEnd::Lost => Settlement::settle(Settle::Ack),
    }
}

/// How long a commit is retried in place before the message is retried instead
/// (which re-runs the job only if the store stays away that long).
const COMMIT_RETRIES: u32 = 6;

/// Carries out `s` for the delivery `d` of `spec`: commits through `fence` (when
/// a run holds the job), then settles the message.
pub async fn apply(
    svc: &Services,
    queue: &Queue,
    d: Delivery,
    spec: Option<&JobSpec>,
    fence: Option<&Fence>,
    observer: Option<&dyn Observer>,
    s: Settlement,
) {
    let settle = match (fence, spec) {
        (Some(fence), Some(spec)) if !matches!(s.commit, Commit::Nothing) => {
            let mut pause = Duration::from_millis(500);
            let mut tries = 0;
            loop {
                match commit(svc, spec, fence, &s.commit, observer).await {
                    Ok(()) => break s.settle,
                    Err(StoreError::Lost { .. }) => {
                        info!("lost the job before committing; leaving it to its owner");
                        break Settle::Ack;
                    }
                    Err(e) if e.retryable() && tries < COMMIT_RETRIES => {
                        tries += 1;
                        warn!(error = %e, tries, "committing the outcome failed; trying again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                    Err(e) => {
                        warn!(error = %e, "committing the outcome failed; retrying the message");
                        let attempt = fence.owner().attempt;
                        break Settle::Retry {
                            attempt,
                            delay: svc.settings.retry_delay(attempt.max(1)),
                        };
                    }
                }
            }
        }
        _ => s.settle,
    };
    let r = match settle {
        Settle::Ack => queue.ack(d).await,
        Settle::Retry { attempt, delay } => queue.retry(d, attempt, delay).await,
        Settle::DeadLetter(reason) => queue.dead_letter(d, &reason).await,
        Settle::Requeue => queue.requeue(d).await,
    };
    if let Err(e) = r {
        // The broker redelivers an unsettled message; the status record makes that safe.
        warn!(error = %e, "settling the delivery failed");
    }
}

async fn commit(
    svc: &Services,
    spec: &JobSpec,
    fence: &Fence,
    c: &Commit,
    observer: Option<&dyn Observer>,
) -> Result<(), StoreError> {
    match c {
        Commit::Nothing => Ok(()),
        Commit::Final(r) => {
            fence.put_json(&JobKeys(&spec.id).result(), r).await?;
            let me = svc.settings.worker_id.clone();
            fence
                .update(|s| {
                    s.attempt = r.attempt;
                    s.error = r.error.clone();
                    s.steps = r.steps;
                    s.cost_usd = r.cost_usd;
                    s.transition(r.outcome.state(), Some(&me), None);
                    true
                })
                .await?;
            // After results and the terminal status are stored; returns at once.
            // A rejected job gets none: what it names (its URL, the secret that
            // would sign for it) is exactly what was refused.
            if r.outcome != Outcome::Rejected {
                svc.notifier.job_finished(spec, r);
            }
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
        Commit::Retrying(e) => fence
            .update(|s| {
                s.error = e.clone();
                s.transition(State::Retrying, None, e.as_ref().map(|e| e.kind.clone()));
                true
            })
            .await
            .map(drop),
        Commit::Requeued => fence
            .update(|s| {
                // The attempt was cut short by this worker, not by the job.
                s.attempt = s.attempt.saturating_sub(1);
                s.transition(
                    State::Queued,
                    None,
                    Some("requeued at worker shutdown".into()),
                );
                true
            })
            .await
            .map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Outcome, Phase};

    fn result(outcome: Outcome) -> JobResult {
        let e = ErrorInfo {
            kind: "docker_unavailable".into(),
            phase: Phase::Workspace,
            retryable: true,
            message: "down".into(),
        };
        JobResult::unrun("j", outcome, 1, Some(e), None)
    }

    #[test]
    fn each_end_has_one_settlement() {
        let d = Duration::from_secs(5);
        let s = decide(AttemptEnd::Final(result(Outcome::Succeeded)), 1, 3, d);
        assert!(matches!(s.commit, Commit::Final(_)) && s.settle == Settle::Ack);
        let s = decide(AttemptEnd::Retry(result(Outcome::Failed)), 2, 3, d);
        assert!(matches!(s.commit, Commit::Retrying(Some(_))));
        assert_eq!(
            s.settle,
            Settle::Retry {
                attempt: 2,
                delay: d
            }
        );
        let s = decide(AttemptEnd::Retry(result(Outcome::Failed)), 3, 3, d);
        assert!(matches!(s.commit, Commit::Final(_)));
        assert_eq!(
            s.settle,
            Settle::DeadLetter("gave up after 3 attempts: docker_unavailable".into())
        );
        let s = decide(AttemptEnd::Aborted, 1, 3, d);
        assert!(matches!(s.commit, Commit::Requeued) && s.settle == Settle::Requeue);
        let s = decide(AttemptEnd::Lost, 1, 3, d);
        assert!(matches!(s.commit, Commit::Nothing) && s.settle == Settle::Ack);
    }
}
