//! Messages a worker cannot run: dead-lettered with the reason, the worker goes on.

use std::time::Duration;

use agent_fleet::job::{Outcome, State};
use agent_fleet::queue::JobMessage;
use chrono::Utc;

use super::harness::{Fleet, WAIT, few_steps, poll};

#[test]
fn garbage_and_oversized_messages_are_dead_lettered_and_the_worker_goes_on() {
    let f = Fleet::new();
    let w = f.worker(1, &[]);

    // Not JSON, no message id, no headers at all.
    f.publish_raw(b"\xff\xfe{garbage \x00\x01", None);
    // Over the 1 MiB limit, with a valid id: the id gets a `rejected` status.
    let big_id = format!("big-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let body = format!(
        r#"{{"id":"{big_id}","task":"{}"}}"#,
        "x".repeat((1 << 20) + 1000)
    );
    f.publish(JobMessage {
        job_id: big_id.clone(),
        priority: 0,
        attempt: 0,
        enqueued_at: Utc::now(),
        body: body.into(),
    });

    let seen = std::sync::Mutex::new(Vec::new());
    poll(
        WAIT,
        "two dead letters",
        || {
            let mut d = seen.lock().unwrap();
            d.extend(f.take_dead_letters());
            (d.len() >= 2).then_some(())
        },
        || {
            format!(
                "dead letters so far: {:?}\n{}",
                seen.lock().unwrap(),
                f.diagnostics()
            )
        },
    );
    let dead = seen.into_inner().unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let garbage = dead
        .iter()
        .find(|d| d.0.is_empty())
        .expect("the garbage one");
    assert!(
        garbage.1.contains("not a JSON job"),
        "reason of the garbage message: {:?}",
        garbage.1
    );
    let big = dead
        .iter()
        .find(|d| d.0 == big_id)
        .expect("the oversized one");
    assert!(
        big.1.contains("exceeds") && big.1.contains(&(1usize << 20).to_string()),
        "reason of the oversized message: {:?}",
        big.1
    );
    assert!(big.2 > 1 << 20, "the dead letter keeps the body");

    let s = f.wait_state(&big_id, State::Rejected, Duration::from_secs(30));
    assert_eq!(
        s.error.as_ref().map(|e| e.kind.as_str()),
        Some("invalid_job")
    );
    let r = f.result(&big_id).expect("a result for the rejected job");
    assert_eq!(r.outcome, Outcome::Rejected);

    // Alive, and still taking work.
    assert!(f.alive(&w), "the worker died on bad input");
    let (job, script) = few_steps("after");
    let id = f.add_job("after", job, script);
    f.submit();
    let s = f.wait_terminal(&[id], WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{:?}", s.history);
    assert!(f.alive(&w));
    assert_eq!(f.depth("fleet.dead"), 0);
}
