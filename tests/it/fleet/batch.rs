//! Batches through the fleet: two workers sharing one, and `submit --wait`.

use std::collections::BTreeMap;

use agent_fleet::job::{Outcome, State};
use serde_json::{Value, json};

use super::harness::{Fleet, WAIT, few_steps, runs, states, terminal_transitions};
use crate::util::containers_for;

#[test]
fn two_workers_drain_a_batch_of_20_each_job_once() {
    let f = Fleet::new();
    let w1 = f.worker(2, &[]);
    let w2 = f.worker(2, &[]);
    let mut ids = Vec::new();
    for i in 0..20 {
        let (job, script) = few_steps(&format!("marker-{i}"));
        ids.push(f.add_job(&format!("j{i:02}"), job, script));
    }
    let sub = f.submit();
    assert_eq!(sub.job_ids, ids);

    let done = f.wait_terminal(&ids, WAIT);
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (id, s)) in ids.iter().zip(&done).enumerate() {
        assert_eq!(s.state, State::Succeeded, "{id}: {:?}", states(s));
        // One run, one terminal state: queued → running → succeeded.
        assert_eq!(
            states(s),
            [State::Queued, State::Running, State::Succeeded],
            "{id}: {:?}",
            s.history
        );
        assert_eq!(terminal_transitions(s), 1, "{id}");
        assert_eq!(runs(s), 1, "{id}");
        assert_eq!(s.attempt, 1, "{id}");
        assert_eq!(s.batch_id.as_deref(), Some(sub.batch_id.as_str()));
        let runner = s.history[1]
            .worker
            .clone()
            .expect("running names its worker");
        assert_eq!(
            s.history[2].worker.as_deref(),
            Some(runner.as_str()),
            "{id}"
        );
        *per_worker.entry(runner.clone()).or_default() += 1;

        // One result set, by the worker that ran it.
        let r = f
            .result(id)
            .unwrap_or_else(|| panic!("{id}: no result.json"));
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.attempt, 1);
        assert_eq!(r.steps, 4);
        assert_eq!(r.worker.as_deref(), Some(runner.as_str()));
        assert_eq!(
            r.final_message.as_deref(),
            Some(format!("wrote marker-{i}").as_str())
        );
        let mut files = f.files(id);
        files.sort();
        assert_eq!(
            files,
            [
                "artifacts/out.txt",
                "events.jsonl",
                "job.json",
                "metrics.json",
                "patch.diff",
                "result.json",
                "status.json"
            ],
            "{id}"
        );
        assert_eq!(
            f.file(id, "artifacts/out.txt").unwrap(),
            format!("marker-{i}\n").into_bytes()
        );
        let patch = String::from_utf8(f.file(id, "patch.diff").unwrap()).unwrap();
        assert!(patch.contains(&format!("+marker-{i}")), "{id}: {patch}");
        // Exactly one conversation in the event log: one system prompt, one finish.
        let events = String::from_utf8(f.file(id, "events.jsonl").unwrap()).unwrap();
        let count = |kind: &str| {
            events
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["kind"].as_str() == Some(kind)
                })
                .count()
        };
        assert_eq!(count("SystemPromptEvent"), 1, "{id}");
        assert_eq!(containers_for(id), 0, "{id}: container left behind");
    }
    assert_eq!(per_worker.values().sum::<usize>(), 20);
    for w in [&w1, &w2] {
        assert!(
            per_worker.get(&w.id).copied().unwrap_or(0) > 0,
            "{} ran no job: {per_worker:?}",
            w.name
        );
        assert!(f.alive(w), "{} died", w.name);
    }
    assert_eq!(f.depth("fleet.jobs"), 0);
    assert_eq!(f.depth("fleet.dead"), 0);
}

#[test]
fn submit_wait_exits_0_for_a_succeeded_batch_and_1_for_a_stuck_one() {
    let f = Fleet::new();
    f.worker(2, &[]);

    let mut ok = Vec::new();
    for i in 0..2 {
        let (job, script) = few_steps(&format!("ok-{i}"));
        ok.push(f.add_job("ok", job, script));
    }
    let file = f.job_file();
    let out = f.cli(
        &["submit", file.to_str().unwrap(), "--wait", "--json"],
        WAIT,
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, f.diagnostics());
    let v: Value = serde_json::from_str(&out.stdout).expect("--json output");
    let outcomes: Vec<(&str, &str)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["job_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [(ok[0].as_str(), "succeeded"), (ok[1].as_str(), "succeeded")]
    );

    // One job succeeds, one repeats the same action until stuck detection fires.
    let (job, script) = few_steps("fine");
    let fine = f.add_job("fine", job, script);
    let stuck = f.add_job(
        "loop",
        json!({"task": "loop"}),
        json!({"steps": [{"tool": "terminal", "args": {"command": "echo same"}}],
               "repeat_last": true}),
    );
    let file = f.job_file();
    let out = f.cli(&["submit", file.to_str().unwrap(), "--wait"], WAIT);
    assert_eq!(out.code, Some(1), "{}\n{}", out.stderr, f.diagnostics());
    assert!(out.stdout.contains(&stuck), "{}", out.stdout);
    let s = f.status(&stuck).unwrap();
    assert_eq!(s.state, State::Stuck);
    assert_eq!(terminal_transitions(&s), 1);
    let r = f.result(&stuck).unwrap();
    assert_eq!(r.outcome, Outcome::Stuck);
    assert_eq!(r.stuck_pattern.as_deref(), Some("action_observation"));
    assert_eq!(f.status(&fine).unwrap().state, State::Succeeded);
    assert_eq!(containers_for(&stuck), 0);
}
