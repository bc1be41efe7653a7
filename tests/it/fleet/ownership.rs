//! One run, one result, under partial failure: a paused worker that lost its job
//! (fencing), a job that kills its worker every time (attempts count), garbage
//! carrying a real job's id (messages are pointers), a submit whose publish
//! failed (idempotent submit), a redelivery mid-run (attempts kept in the
//! record), and two workers on one local store (flock). Runs are counted by the
//! scripted LLM's own request log and by side effects outside the workspace,
//! not only by the records the workers write.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agent_fleet::job::State;
use serde_json::json;

use super::harness::{
    Fleet, HookReceiver, WAIT, few_steps, poll, runs, states, terminal_transitions,
};
use crate::util::containers_for;

fn container_ids(job_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=fleet.job_id={job_id}"),
        ])
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn container_exists(id: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("id={id}")])
        .output()
        .expect("docker CLI");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// A job whose first command takes `secs`, writing the container's hostname
/// (its container id) to who.txt, then finishes.
fn who_job(secs: u64) -> (serde_json::Value, serde_json::Value) {
    (
        json!({"task": "who ran me", "limits": {"command_timeout_secs": 600}}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": format!("sleep {secs}; hostname > who.txt")}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    )
}

#[test]
fn a_paused_worker_that_lost_its_job_stops_writes_nothing_and_removes_its_container() {
    let mut f = Fleet::new();
    let hooks = HookReceiver::start(&f);
    f.set_env("FLEET_WEBHOOK_URL", &hooks.url);
    let (job, script) = who_job(10);
    let id = f.add_job("paused", job, script);
    let a = f.worker(1, &[]);
    f.submit();
    poll(
        WAIT,
        "worker a to run the job's command",
        || (f.llm_runs(&id) == 1 && containers_for(&id) == 1).then_some(()),
        || f.diagnostics(),
    );
    let a_container = container_ids(&id).remove(0);

    // Worker a freezes past its lease; its broker connection is cut, so the
    // broker redelivers the message to worker b, which takes the job over.
    f.signal(&a, libc::SIGSTOP);
    assert_eq!(f.close_consumer_connections("fleet.jobs"), 1);
    let b = f.worker(1, &[]);
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{}", f.diagnostics());
    poll(
        WAIT,
        "b's webhook to be delivered and recorded",
        || {
            let s = f.status(&id)?;
            (s.webhooks.iter().any(|w| w.delivered) && !hooks.deliveries().is_empty()).then_some(())
        },
        || f.diagnostics(),
    );
    let before_wake = f.object_versions(&id);
    assert!(
        container_exists(&a_container),
        "a's container is still there while a is frozen"
    );

    f.signal(&a, libc::SIGCONT);
    let woke = Instant::now();
    poll(
        Duration::from_secs(20),
        "a's container to be removed after it woke",
        || (!container_exists(&a_container)).then_some(()),
        || f.diagnostics(),
    );
    let removed_after = woke.elapsed();
    poll(
        WAIT,
        "a to notice it lost the job",
        || f.worker_log(&a).contains("lost its job").then_some(()),
        || f.worker_log(&a),
    );
    std::thread::sleep(Duration::from_secs(3));

    // Nothing a wrote after waking: the S3 server's own view of every object.
    assert_eq!(
        f.object_versions(&id),
        before_wake,
        "a wrote after it lost the job"
    );
    // Well within a heartbeat period of its own (0.5 s) plus the container's removal.
    assert!(
        removed_after < Duration::from_secs(10),
        "removed {removed_after:?} after waking"
    );
    let s = f.status(&id).unwrap();
    assert_eq!(terminal_transitions(&s), 1, "{:?}", states(&s));
    assert_eq!(runs(&s), 2, "{:?}", states(&s));
    assert_eq!(s.attempt, 2);
    let r = f.result(&id).unwrap();
    assert_eq!(r.worker.as_deref(), Some(b.id.as_str()));
    assert_eq!(r.attempt, 2);
    let patch = String::from_utf8(f.file(&id, "patch.diff").unwrap()).unwrap();
    assert!(patch.contains("who.txt"), "{patch}");
    assert!(
        !patch.contains(&a_container[..12]),
        "the patch is a's: {patch}"
    );
    // The LLM saw two runs start and one finish: a made no step after waking.
    assert_eq!(f.llm_runs(&id), 2, "{:?}", f.llm_requests(&id));
    assert_eq!(
        f.llm_requests(&id).iter().filter(|s| **s == 1).count(),
        1,
        "{:?}",
        f.llm_requests(&id)
    );
    // One completion, one delivery id, as the receiver saw it.
    let got = hooks.deliveries();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        f.alive(&a),
        "a survives losing a job:\n{}",
        f.worker_log(&a)
    );
}

#[test]
fn a_job_that_kills_its_worker_every_time_fails_worker_lost_after_max_attempts() {
    let mut f = Fleet::new();
    f.set_env("FLEET_MAX_ATTEMPTS", "2");
    let (job, script) = who_job(600);
    let poison = f.add_job("poison", job, script);
    let (job, script) = few_steps("fine");
    let fine = f.add_job("fine", job, script);
    // One slot each: killing the poison job's worker kills no other job.
    let mut workers = vec![f.worker(1, &[]), f.worker(1, &[])];
    f.submit();
    for attempt in 1..=2u32 {
        let s = poll(
            WAIT,
            &format!("attempt {attempt} of the poison job to run"),
            || {
                let s = f.status(&poison)?;
                (s.state == State::Running
                    && s.attempt == attempt
                    && f.llm_runs(&poison) == attempt as usize)
                    .then_some(s)
            },
            || f.diagnostics(),
        );
        let victim = workers
            .iter()
            .find(|w| Some(w.id.as_str()) == s.worker.as_deref())
            .cloned()
            .expect("the worker running it");
        f.kill(&victim);
        workers.push(f.worker(1, &[]));
    }
    let s = f
        .wait_terminal(std::slice::from_ref(&poison), WAIT)
        .remove(0);
    assert_eq!(s.state, State::Failed, "{}", f.diagnostics());
    assert_eq!(
        s.error.as_ref().map(|e| e.kind.as_str()),
        Some("worker_lost")
    );
    assert_eq!(s.attempt, 2);
    assert_eq!(terminal_transitions(&s), 1);
    assert_eq!(
        f.llm_runs(&poison),
        2,
        "two runs in all, by the LLM's count"
    );
    let dead = f.take_dead_letters();
    assert!(
        dead.iter()
            .any(|(m, why, _)| m == &poison && why.contains("worker_lost")),
        "{dead:?}"
    );
    let s = f.wait_terminal(std::slice::from_ref(&fine), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{}", f.diagnostics());
}

#[test]
fn garbage_and_an_impostor_carrying_a_queued_jobs_id_leave_its_records_alone() {
    let f = Fleet::new();
    let (job, script) = few_steps("real");
    let id = f.add_job("pointer", job, script);
    f.submit();
    // Next to the job's real message: garbage with its id, and a valid job with
    // its id that says something else (another task, another model).
    f.publish_raw(b"{not json", Some(&id));
    let impostor = json!({"id": id, "task": "impostor", "image": crate::util::TEST_IMAGE, "llm": {"model": format!("impostor-{id}")}});
    f.publish_raw(impostor.to_string().as_bytes(), Some(&id));
    let s = f.status(&id).unwrap();
    assert_eq!(s.state, State::Queued);
    let _w = f.worker(1, &[]);
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{}", f.diagnostics());
    assert!(!states(&s).contains(&State::Rejected), "{:?}", states(&s));
    assert_eq!(runs(&s), 1);
    assert_eq!(f.llm_runs(&id), 1);
    assert!(
        f.llm_requests(&format!("impostor-{id}")).is_empty(),
        "the stored job wins"
    );
    poll(
        WAIT,
        "the garbage to be dead-lettered",
        || {
            let dead = f.take_dead_letters();
            dead.iter()
                .any(|(m, why, _)| m == &id && why.contains("left alone"))
                .then_some(())
        },
        || f.diagnostics(),
    );
    assert_eq!(f.status(&id).unwrap().state, State::Succeeded);
}

#[test]
fn a_submit_that_could_not_publish_names_the_jobs_and_running_it_again_publishes_them() {
    let f = Fleet::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let (job, script) = few_steps(&format!("s{i}"));
        ids.push(f.add_job("submit", job, script));
    }
    let file = f.job_file();
    let file = file.to_str().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f");
    let out = f.cli_env(
        &["submit", file],
        &[("FLEET_QUEUE", &down)],
        Duration::from_secs(90),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for id in &ids {
        assert!(
            out.stderr.contains(id.as_str()),
            "{id} not named: {}",
            out.stderr
        );
        assert_eq!(f.status(id).unwrap().state, State::Queued);
    }
    let _w = f.worker(2, &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ids.iter().all(|id| f.llm_runs(id) == 0),
        "nothing was published"
    );

    let out = f.cli(&["submit", file], Duration::from_secs(90));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let done = f.wait_terminal(&ids, WAIT);
    assert!(
        done.iter().all(|s| s.state == State::Succeeded),
        "{}",
        f.diagnostics()
    );
    // Once more: everything is stored and ended, nothing is sent again.
    let out = f.cli(&["submit", file], Duration::from_secs(90));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("not published again"), "{}", out.stderr);
    std::thread::sleep(Duration::from_secs(3));
    for id in &ids {
        assert_eq!(f.llm_runs(id), 1, "{id}: {:?}", f.llm_requests(id));
        assert_eq!(runs(&f.status(id).unwrap()), 1);
    }
    // --resubmit runs an ended job again, its history kept.
    let out = f.cli(&["submit", file, "--resubmit"], Duration::from_secs(90));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    poll(
        WAIT,
        "the resubmitted jobs to run again",
        || {
            ids.iter()
                .all(|id| {
                    f.llm_runs(id) == 2
                        && f.status(id)
                            .is_some_and(|s| s.state.is_terminal() && runs(&s) == 2)
                })
                .then_some(())
        },
        || f.diagnostics(),
    );
    let s = f.status(&ids[0]).unwrap();
    assert!(
        s.history
            .iter()
            .any(|t| t.note.as_deref() == Some("resubmitted")),
        "{:?}",
        s.history
    );
    assert_eq!(terminal_transitions(&s), 2);
}

#[test]
fn a_redelivery_mid_run_starts_no_second_run_and_a_later_fault_still_counts_attempts() {
    let mut f = Fleet::new();
    f.set_env("FLEET_MAX_ATTEMPTS", "2");
    let id = f.add_job(
        "stale",
        json!({"task": "long then failing", "limits": {"command_timeout_secs": 600}}),
        // Step 1 is a 503 on every request: an LLM outage, retried as an
        // infrastructure fault on each attempt.
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "sleep 8"}},
            {"fail": {"status": 503, "times": 100000}, "tool": "finish", "args": {"message": "never"}}
        ]}),
    );
    let _w = f.worker(1, &[]);
    f.submit();
    poll(
        WAIT,
        "the first run's command",
        || (f.llm_runs(&id) == 1).then_some(()),
        || f.diagnostics(),
    );
    // What the broker's consumer_timeout does to a long delivery: take it back
    // from the live run and deliver it again.
    assert_eq!(f.close_consumer_connections("fleet.jobs"), 1);
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT).remove(0);
    assert_eq!(s.state, State::Failed, "{}", f.diagnostics());
    assert_eq!(
        s.error.as_ref().map(|e| e.kind.as_str()),
        Some("llm_unavailable")
    );
    assert_eq!(s.attempt, 2, "{:?}", states(&s));
    assert_eq!(runs(&s), 2, "{:?}", states(&s));
    assert_eq!(terminal_transitions(&s), 1);
    assert_eq!(f.llm_runs(&id), 2, "two runs by the LLM's count");
    poll(
        WAIT,
        "the message in fleet.dead",
        || {
            f.take_dead_letters()
                .iter()
                .any(|(m, why, _)| m == &id && why.contains("gave up after 2 attempts"))
                .then_some(())
        },
        || f.diagnostics(),
    );
}

#[test]
fn two_workers_on_one_local_store_never_both_run_a_job() {
    let f = Fleet::with_local_store();
    let ledger = f.dir.path().join("side-effects.log");
    let mut ids = Vec::new();
    for i in 0..100 {
        let marker = format!("j{i}");
        let id = f.add_job(
            "local",
            json!({"task": format!("count {marker}")}),
            json!({"steps": [
                {"tool": "terminal", "args": {"command": format!("echo {marker} >> {}", ledger.display())}},
                {"tool": "finish", "args": {"message": "counted"}}
            ]}),
        );
        ids.push((id, marker));
    }
    let file = f.job_file();
    let file = file.to_str().unwrap();
    // Submitted twice: every job has two messages, so the two workers race to
    // claim each job through the shared directory.
    for _ in 0..2 {
        let out = f.cli(&["submit", file], Duration::from_secs(120));
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let a = f.worker(4, &["--workspace", "local"]);
    let b = f.worker(4, &["--workspace", "local"]);
    let all: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    let done = f.wait_terminal(&all, Duration::from_secs(600));
    assert!(
        done.iter().all(|s| s.state == State::Succeeded),
        "{}",
        f.diagnostics()
    );
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text.lines() {
        *counts.entry(l.trim()).or_default() += 1;
    }
    let mut workers = BTreeSet::new();
    for ((id, marker), s) in ids.iter().zip(&done) {
        assert_eq!(
            counts.get(marker.as_str()),
            Some(&1),
            "{id} ran {:?} times by the ledger",
            counts.get(marker.as_str())
        );
        assert_eq!(f.llm_runs(id), 1, "{id}: {:?}", f.llm_requests(id));
        assert_eq!(
            (runs(s), terminal_transitions(s)),
            (1, 1),
            "{id}: {:?}",
            states(s)
        );
        workers.insert(s.worker.clone());
    }
    assert_eq!(workers.len(), 2, "both workers ran jobs: {workers:?}");
    assert!(f.alive(&a) && f.alive(&b));
}

/// Stores the pending jobs with the broker unreachable: records, no messages.
fn strand(f: &Fleet) -> Vec<String> {
    let file = f.job_file();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f");
    let out = f.cli_env(
        &["submit", file.to_str().unwrap(), "--json"],
        &[("FLEET_QUEUE", &down)],
        Duration::from_secs(90),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    out.stderr
        .lines()
        .find(|l| l.contains("not confirmed"))
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, ids)| ids.split(", ").map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn the_workers_sweeper_republishes_a_job_stranded_without_a_message() {
    let mut f = Fleet::new();
    let (job, script) = few_steps("stranded");
    let id = f.add_job("swept", job, script);
    assert_eq!(strand(&f), vec![id.clone()]);
    f.set_env("FLEET_SWEEP_SECS", "1");
    f.set_env("FLEET_SWEEP_GRACE_SECS", "2");
    let w = f.worker(1, &[]);
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT).remove(0);
    assert_eq!(s.state, State::Succeeded, "{}", f.diagnostics());
    assert_eq!(f.llm_runs(&id), 1);
    assert!(
        f.worker_log(&w)
            .contains("republished a job that had no message"),
        "{}",
        f.worker_log(&w)
    );
}

#[test]
fn fleet_reconcile_republishes_stranded_jobs_and_fails_runs_whose_worker_is_gone() {
    let f = Fleet::new();
    let (job, script) = few_steps("reconciled");
    let queued = f.add_job("rq", job, script);
    let (job, script) = few_steps("orphan");
    let orphan = f.add_job("ro", job, script);
    let stranded = strand(&f);
    assert_eq!(stranded.len(), 2);
    // The orphan: a run that claimed it and died with its message gone.
    f.block_on(f.store.update_status(&orphan, |s| {
        s.attempt = 1;
        s.owner = Some(agent_fleet::job::Owner::new("gone-host-1-0000", 1));
        s.lease_secs = 3;
        s.transition(State::Running, Some("gone-host-1-0000"), None);
        true
    }))
    .unwrap();
    let out = f.cli(
        &[
            "reconcile",
            "--grace-secs",
            "0",
            "--watch-secs",
            "2",
            "--json",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["republished"], json!([queued]), "{report}");
    assert_eq!(report["failed"], json!([orphan]), "{report}");
    let s = f.status(&orphan).unwrap();
    assert_eq!(s.state, State::Failed);
    assert_eq!(
        s.error.as_ref().map(|e| e.kind.as_str()),
        Some("worker_lost")
    );
    assert_eq!(
        f.result(&orphan)
            .map(|r| r.outcome.as_str().to_string())
            .as_deref(),
        Some("failed")
    );
    assert!(f.file(&orphan, "patch.diff").is_some() && f.file(&orphan, "events.jsonl").is_some());
    // The republished job runs once on a worker; the failed one stays failed.
    let _w = f.worker(1, &[]);
    let s = f
        .wait_terminal(std::slice::from_ref(&queued), WAIT)
        .remove(0);
    assert_eq!(s.state, State::Succeeded, "{}", f.diagnostics());
    assert_eq!(f.llm_runs(&queued), 1);
    assert_eq!(f.llm_runs(&orphan), 0);
    // A second reconcile finds nothing to do.
    let out = f.cli(
        &[
            "reconcile",
            "--grace-secs",
            "0",
            "--watch-secs",
            "1",
            "--json",
        ],
        Duration::from_secs(90),
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (report["republished"].clone(), report["failed"].clone()),
        (json!([]), json!([])),
        "{report}"
    );
}
