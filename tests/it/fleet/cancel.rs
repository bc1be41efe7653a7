//! `fleet cancel` of a queued job (skipped when it arrives) and of a running one
//! (stopped within seconds, container removed).

use std::time::{Duration, Instant};

use agent_fleet::job::{Outcome, State};

use super::harness::{Fleet, WAIT, few_steps, runs, slow, states, terminal_transitions};
use crate::util::containers_for;

#[test]
fn cancel_of_a_queued_job_marks_it_and_the_worker_skips_it() {
    let f = Fleet::new();
    let (job, script) = few_steps("never");
    let id = f.add_job("queued", job, script);
    f.submit();
    assert_eq!(f.status(&id).unwrap().state, State::Queued);

    let out = f.cli(&["cancel", &id], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let s = f.status(&id).unwrap();
    assert_eq!(s.state, State::Cancelled);
    assert!(s.cancel_requested);
    let r = f.result(&id).expect("result.json");
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(r.steps, 0);

    // A worker started now gets the message first (FIFO, one slot), skips it, then
    // runs the next job.
    let (job, script) = few_steps("next");
    let next = f.add_job("next", job, script);
    f.submit();
    let w = f.worker(1, &[]);
    let s = f.wait_terminal(std::slice::from_ref(&next), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded);

    let s = f.status(&id).unwrap();
    assert_eq!(
        states(&s),
        [State::Queued, State::Cancelled],
        "{:?}",
        s.history
    );
    assert_eq!(runs(&s), 0, "a cancelled job ran");
    assert_eq!(f.result(&id).unwrap().outcome, Outcome::Cancelled);
    assert!(f.file(&id, "metrics.json").is_none(), "it never ran");
    assert_eq!(containers_for(&id), 0);
    assert_eq!(
        f.depth("fleet.jobs"),
        0,
        "the cancelled job's message was settled"
    );
    assert!(f.alive(&w));

    // Cancelling it again: it already ended.
    let out = f.cli(&["cancel", &id], Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
}

#[test]
fn cancel_of_a_running_job_stops_it_within_seconds_and_removes_its_container() {
    let f = Fleet::new();
    let w = f.worker(1, &[]);
    let (job, script) = slow(300);
    let id = f.add_job("running", job, script);
    f.submit();
    f.wait_state(&id, State::Running, WAIT);
    f.wait_container(&id, WAIT);

    let t0 = Instant::now();
    let out = f.cli(&["cancel", &id], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let s = f
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(60))
        .remove(0);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "cancel took {took:?}");
    assert_eq!(s.state, State::Cancelled, "{:?}", s.history);
    assert_eq!(terminal_transitions(&s), 1);
    assert_eq!(runs(&s), 1);
    let r = f.result(&id).unwrap();
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert_eq!(r.worker.as_deref(), Some(w.id.as_str()));
    // The event log says so, and was kept.
    let events = String::from_utf8(f.file(&id, "events.jsonl").unwrap()).unwrap();
    assert!(events.contains("Cancelled"), "{events}");
    f.wait_no_container(&id, Duration::from_secs(10));
    assert!(f.alive(&w));
    assert_eq!(f.depth("fleet.jobs"), 0);
}
