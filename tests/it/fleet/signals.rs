//! SIGTERM: a running job is drained (finishes within the grace period), or,
//! past a short grace period, stopped and requeued for another worker.

use std::time::Duration;

use agent_fleet::job::{Outcome, State};

use super::harness::{Fleet, WAIT, runs, slow, states, terminal_transitions};
use crate::util::containers_for;

#[test]
fn sigterm_drains_the_running_job_then_exits_0() {
    let f = Fleet::new();
    let w = f.worker(2, &[]);
    let (job, script) = slow(4);
    let id = f.add_job("drain", job, script);
    f.submit();
    f.wait_state(&id, State::Running, WAIT);
    f.wait_container(&id, WAIT);
    f.signal(&w, libc::SIGTERM);

    let status = f.wait_exit(&w, WAIT);
    assert_eq!(status.code(), Some(0), "{}", f.worker_log(&w));
    // It finished before the worker exited.
    let s = f.status(&id).unwrap();
    assert_eq!(s.state, State::Succeeded, "{:?}", s.history);
    assert_eq!(
        states(&s),
        [State::Queued, State::Running, State::Succeeded]
    );
    assert_eq!(s.history[1].worker.as_deref(), Some(w.id.as_str()));
    let r = f.result(&id).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(containers_for(&id), 0, "container left behind");
    assert_eq!(f.depth("fleet.jobs"), 0);
}

#[test]
fn sigterm_past_the_grace_period_requeues_the_job_for_another_worker() {
    let f = Fleet::new();
    let w1 = f.worker(1, &["--grace-secs", "1"]);
    let (job, script) = slow(8);
    let id = f.add_job("requeue", job, script);
    f.submit();
    f.wait_state(&id, State::Running, WAIT);
    f.wait_container(&id, WAIT);
    f.signal(&w1, libc::SIGTERM);

    let status = f.wait_exit(&w1, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", f.worker_log(&w1));
    let s = f.status(&id).unwrap();
    assert_eq!(s.state, State::Queued, "{:?}", s.history);
    assert_eq!(
        states(&s),
        [State::Queued, State::Running, State::Queued],
        "{:?}",
        s.history
    );
    assert_eq!(s.attempt, 0, "an aborted attempt does not count");
    assert!(f.result(&id).is_none(), "no result for a requeued job");
    assert_eq!(containers_for(&id), 0, "container left behind");
    assert_eq!(f.depth("fleet.jobs"), 1, "the message is back in the queue");

    let w2 = f.worker(1, &[]);
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{:?}", s.history);
    assert_eq!(terminal_transitions(&s), 1);
    assert_eq!(runs(&s), 2);
    let last_run = s
        .history
        .iter()
        .rev()
        .find(|t| t.state == State::Running)
        .unwrap();
    assert_eq!(last_run.worker.as_deref(), Some(w2.id.as_str()));
    let r = f.result(&id).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(r.attempt, 1);
    assert_eq!(r.worker.as_deref(), Some(w2.id.as_str()));
    assert_eq!(containers_for(&id), 0);
}
