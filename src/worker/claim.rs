//! Claiming a job through its status record: one compare-and-swap that decides
//! whether this delivery runs the job, and writes the run's owner token when it
//! does. The record's attempt count is the authority (a message's is not): every
//! claim that starts a run — a takeover of a dead worker's run included — is one
//! more attempt, and past `FLEET_MAX_ATTEMPTS` the job is given up on.

use std::sync::Mutex;

use chrono::Utc;

use super::lease::LeaseWatch;
use crate::config::RunSettings;
use crate::job::{Owner, State, StatusRecord};
use crate::store::{Store, StoreError};

/// What the claim decided.
#[derive(Debug)]
pub enum Claim {
    /// This delivery runs the job as `owner` (a takeover of a dead run or not).
    Run { owner: Owner, taken_over: bool },
    /// The job ended already: nothing to do.
    Skip(&'static str),
    /// A live run holds it (or it may): look again after a lease.
    Defer,
    /// Cancel was requested before it ran; `owner` holds it to record that.
    Cancelled { owner: Owner, attempt: u32 },
    /// A takeover would pass the attempt limit; `owner` holds it to fail it.
    Exhausted { owner: Owner, attempt: u32 },
}

/// Decided inside the compare-and-swap (which may run it several times).
#[derive(Debug, Clone)]
enum Decision {
    Run(Owner, bool),
    Skip,
    Defer,
    Cancelled(Owner),
    Exhausted(Owner),
}

/// Claims `job_id` for this worker (see the module doc).
pub async fn claim(
    store: &Store,
    job_id: &str,
    s: &RunSettings,
    watch: &LeaseWatch,
) -> Result<Claim, StoreError> {
    let decided = Mutex::new(Decision::Defer);
    let rec = store
        .update_status(job_id, |r| {
            let d = decide(r, s, watch);
            *decided.lock().expect("decision") = d.clone();
            apply(r, &d, s);
            matches!(
                d,
                Decision::Run(..) | Decision::Cancelled(_) | Decision::Exhausted(_)
            )
        })
        .await?;
    let Some(rec) = rec else {
        // No record: the caller writes one before claiming; another look later.
        return Ok(Claim::Defer);
    };
    let d = decided.into_inner().expect("decision");
    Ok(match d {
        Decision::Run(owner, taken_over) => {
            watch.forget(job_id);
            Claim::Run { owner, taken_over }
        }
        Decision::Skip => Claim::Skip("already terminal"),
        Decision::Defer => Claim::Defer,
        Decision::Cancelled(owner) => Claim::Cancelled {
            attempt: rec.attempt,
            owner,
        },
        Decision::Exhausted(owner) => Claim::Exhausted {
            attempt: rec.attempt,
            owner,
        },
    })
}

/// Takes `job_id` to record that the worker policy refuses it: an owner token
/// on the record as it stands (no run, no new attempt). `None` when the job
/// ended already or a run holds it (that run's worker admitted it; its own
/// settlement ends it).
pub async fn refuse(
    store: &Store,
    job_id: &str,
    s: &RunSettings,
) -> Result<Option<Owner>, StoreError> {
    let taken = Mutex::new(None);
    store
        .update_status(job_id, |r| {
            if r.state.is_terminal() || r.state == State::Running {
                return false;
            }
            let owner = Owner::new(&s.worker_id, r.attempt);
            apply(r, &Decision::Cancelled(owner.clone()), s);
            *taken.lock().expect("owner") = Some(owner);
            true
        })
        .await?;
    Ok(taken.into_inner().expect("owner"))
}

fn decide(r: &StatusRecord, s: &RunSettings, watch: &LeaseWatch) -> Decision {
    if r.state.is_terminal() {
        return Decision::Skip;
    }
    let taken_over = r.state == State::Running;
    if taken_over && !owner_dead(r, watch) {
        return Decision::Defer;
    }
    let attempt = r.attempt + 1;
    let owner = Owner::new(&s.worker_id, attempt);
    if r.cancel_requested {
        return Decision::Cancelled(Owner::new(&s.worker_id, r.attempt));
    }
    if attempt > s.max_attempts {
        return Decision::Exhausted(Owner::new(&s.worker_id, r.attempt));
    }
    Decision::Run(owner, taken_over)
}

/// Whether the running record's owner is dead as this worker sees it.
fn owner_dead(r: &StatusRecord, watch: &LeaseWatch) -> bool {
    match r.liveness_mark() {
        Some(mark) => watch.is_dead(&r.job_id, &mark),
        // A record from before owner tokens: its own timestamp is all there is.
        None => r
            .heartbeat
            .is_none_or(|h| (Utc::now() - h).num_milliseconds() >= (r.lease_secs as i64) * 1000),
    }
}

fn apply(r: &mut StatusRecord, d: &Decision, s: &RunSettings) {
    // A new sequence with the new token: observers start counting afresh.
    r.heartbeat_seq += 1;
    match d {
        Decision::Run(owner, taken_over) => {
            r.attempt = owner.attempt;
            r.owner = Some(owner.clone());
            r.lease_secs = s.lease.as_secs().max(1);
            r.error = None;
            let note = taken_over.then(|| "taken over from a worker whose lease expired".into());
            r.transition(State::Running, Some(&s.worker_id), note);
        }
        Decision::Cancelled(owner) | Decision::Exhausted(owner) => {
            r.owner = Some(owner.clone());
            r.heartbeat = Some(Utc::now());
        }
        Decision::Skip | Decision::Defer => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(worker: &str, max: u32) -> RunSettings {
        let mut s = RunSettings::from_env(worker.into());
        s.max_attempts = max;
        s.lease = Duration::from_millis(50);
        s
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
        store
            .put_json("jobs/j/status.json", &StatusRecord::queued("j", None))
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_takeover_is_an_attempt_and_the_limit_ends_it() {
        let (_d, store) = store().await;
        let (a, b) = (settings("a", 2), settings("b", 2));
        let (wa, wb) = (LeaseWatch::new(a.lease), LeaseWatch::new(b.lease));
        let Claim::Run { owner, .. } = claim(&store, "j", &a, &wa).await.unwrap() else {
            panic!("first claim runs")
        };
        assert_eq!(owner.attempt, 1);
        // b sees a live run: defers, and keeps deferring until a lease of silence.
        assert!(matches!(
            claim(&store, "j", &b, &wb).await.unwrap(),
            Claim::Defer
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let Claim::Run {
            owner: ob,
            taken_over,
            ..
        } = claim(&store, "j", &b, &wb).await.unwrap()
        else {
            panic!("b takes over")
        };
        assert!(taken_over);
        assert_eq!(ob.attempt, 2);
        // a's token is gone: its writes are refused.
        let e = store.update_owned("j", &owner, |_| true).await.unwrap_err();
        assert!(matches!(e, StoreError::Lost { .. }), "{e}");
        // b dies too; the next takeover would be attempt 3 of 2.
        assert!(matches!(
            claim(&store, "j", &a, &wa).await.unwrap(),
            Claim::Defer
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let c = claim(&store, "j", &a, &wa).await.unwrap();
        assert!(matches!(c, Claim::Exhausted { attempt: 2, .. }), "{c:?}");
    }

    #[tokio::test]
    async fn a_heartbeat_keeps_the_run_alive_whatever_the_clocks_say() {
        let (_d, store) = store().await;
        let (a, b) = (settings("a", 3), settings("b", 3));
        let wb = LeaseWatch::new(b.lease);
        let Claim::Run { owner, .. } = claim(&store, "j", &a, &LeaseWatch::new(a.lease))
            .await
            .unwrap()
        else {
            panic!()
        };
        for _ in 0..4 {
            // The owner's host clock is an hour behind: the timestamp looks stale.
            store
                .update_owned("j", &owner, |r| {
                    r.heartbeat_seq += 1;
                    r.heartbeat = Some(Utc::now() - chrono::Duration::hours(1));
                    true
                })
                .await
                .unwrap();
            assert!(matches!(
                claim(&store, "j", &b, &wb).await.unwrap(),
                Claim::Defer
            ));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}
