//! What a job asks of the Docker engine, seen from outside the fleet: `fleet run`
//! talks to the engine through the benchmark's counting proxy (which also keeps
//! every request line in the order it read them), and
//! each job's metrics.json `docker_api_calls` must add up to exactly what passed
//! the proxy. A short job without input costs fewer round trips than a bare
//! `docker run`: no exec (the first shell is the container's main process), no
//! base snapshot once the image is known to ship nothing at the workdir, no
//! archive read for the collect (it comes through the job's shell). With one slot, the next
//! job's container is started while the current one runs (pipelining), and
//! every container is gone at the end.

use std::path::Path;

use serde_json::{Value, json};

use crate::util::{Batch, containers_for};

#[allow(dead_code)]
#[path = "../../benches/fleet/apicount.rs"]
mod apicount;

const ENGINE_SOCKET: &str = "/var/run/docker.sock";

/// The counting proxy on the engine socket, for a `Batch` to talk through.
fn counting_proxy(b: &mut Batch) -> apicount::ApiCounter {
    let proxy =
        apicount::ApiCounter::start(&b.dir.path().join("count.sock"), Path::new(ENGINE_SOCKET))
            .expect("the counting proxy");
    b.env("DOCKER_HOST", &proxy.url());
    proxy
}

/// "POST /v1.41/containers/fleet-x-1/start?a=b" → ("POST", "/containers/fleet-x-1/start").
fn method_and_path(line: &str) -> (&str, &str) {
    let (method, target) = line.split_once(' ').unwrap_or((line, ""));
    (method, apicount::path_of(target))
}

/// Calls the backend makes for itself, not for a job: connecting (`/_ping`,
/// `/version`, `/info`) and the sweep of dead runs' containers.
fn backend_call(line: &str) -> bool {
    ["/_ping", "/version", "/info", "/containers/json"]
        .iter()
        .any(|p| {
            line.split(' ')
                .nth(1)
                .is_some_and(|path| path.split('?').next().unwrap().ends_with(p))
        })
}

fn three_step(b: &mut Batch, name: &str) -> String {
    b.job(
        name,
        json!({"task": "t"}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "true"}},
            {"tool": "terminal", "args": {"command": "echo out > out.txt"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    )
}

fn calls(b: &Batch, id: &str) -> Value {
    let m: Value = serde_json::from_str(&b.store_text(id, "metrics.json")).unwrap();
    m["docker_api_calls"].clone()
}

#[test]
fn a_jobs_round_trips_are_counted_exactly_and_few() {
    let mut b = Batch::new();
    // The benchmark's counting proxy: it parses each connection's own byte
    // stream, so requests of concurrent connections never run together.
    let proxy = counting_proxy(&mut b);
    // One job at a time, none started ahead: the first job alone learns that
    // the image ships nothing at the workdir.
    b.env("FLEET_PREPARE_AHEAD", "0");
    let ids: Vec<String> = (0..4)
        .map(|i| three_step(&mut b, &format!("rt{i}")))
        .collect();
    let out = b.run_with(&["--concurrency", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in &ids {
        assert_eq!(out.result(id)["outcome"], "succeeded", "{id}");
        assert!(b.store_text(id, "patch.diff").contains("+out"), "{id}");
        assert_eq!(containers_for(id), 0, "{id} left a container");
    }
    let seen: Vec<String> = proxy
        .counts()
        .snapshot()
        .by_endpoint
        .into_iter()
        .flat_map(|(endpoint, n)| std::iter::repeat_n(endpoint, n as usize))
        .filter(|l| !backend_call(l))
        .collect();
    let counted: u64 = ids
        .iter()
        .map(|id| calls(&b, id)["total"].as_u64().unwrap())
        .sum();
    assert_eq!(
        counted,
        seen.len() as u64,
        "metrics.json counts {counted} calls, the engine was sent {}:\n{}",
        seen.len(),
        seen.join("\n")
    );
    // No exec at all: every command ran in the container's main shell.
    assert!(
        !seen.iter().any(|l| l.contains("/exec")),
        "{}",
        seen.join("\n")
    );
    // Once the image is known (the first job looked), a job is: create, attach,
    // start, one remove. The collect came through the job's own shell (its
    // archive on the container's stderr), so the engine read no archive for it.
    for id in &ids[1..] {
        let c = calls(&b, id);
        assert_eq!(c["input"], 0, "{id}: {c}");
        assert_eq!(c["agent"], 0, "{id}: {c}");
        assert_eq!(c["collect"], 0, "{id}: {c}");
        assert_eq!(c["teardown"], 1, "{id}: {c}");
        assert!(c["total"].as_u64().unwrap() <= 4, "{id}: {c}");
    }
    let reads = seen
        .iter()
        .filter(|l| l.starts_with("GET") && l.contains("/archive"))
        .count();
    assert_eq!(
        reads, 1,
        "one base snapshot in all, no collect through the engine"
    );
}

#[test]
fn the_next_jobs_workspace_is_started_while_the_slot_is_busy() {
    let mut b = Batch::new();
    let proxy = counting_proxy(&mut b);
    // Both jobs sleep, so whichever takes the one slot first keeps it busy while
    // the other waits (which one is up to the scheduler).
    let sleeper = |b: &mut Batch, name: &str| {
        b.job(
            name,
            json!({"task": "t"}),
            json!({"steps": [
                {"tool": "terminal", "args": {"command": "sleep 2"}},
                {"tool": "finish", "args": {"message": "done"}}
            ]}),
        )
    };
    let (first, second) = (sleeper(&mut b, "one"), sleeper(&mut b, "two"));
    let out = b.run_with(&["--concurrency", "1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let prepared = |id: &str| {
        assert_eq!(out.result(id)["outcome"], "succeeded");
        let m: Value = serde_json::from_str(&b.store_text(id, "metrics.json")).unwrap();
        m["workspace_prepared"] == true
    };
    let (ran, waited) = match (prepared(&first), prepared(&second)) {
        (false, true) => (&first, &second),
        (true, false) => (&second, &first),
        other => panic!("expected exactly one job started ahead, got {other:?}"),
    };
    let seen = proxy.counts().snapshot().requests;
    let at = |method: &str, what: &str, job: &str| {
        seen.iter()
            .position(|l| {
                let (m, path) = method_and_path(l);
                m == method && path.ends_with(what) && l.contains(&format!("fleet-{job}-"))
            })
            .unwrap_or_else(|| panic!("no {method} …{what} for {job}:\n{}", seen.join("\n")))
    };
    // What the engine saw: the waiting job's container was made and started
    // while the running one's was still there.
    let removed = at("DELETE", "", ran);
    assert!(
        at("POST", "/containers/create", waited) < removed
            && at("POST", "/start", waited) < removed,
        "the waiting job's container was not started before the running one ended:\n{}",
        seen.join("\n")
    );
    assert_eq!(containers_for(&first) + containers_for(&second), 0);
}

/// The collect reads the workspace's archive through the job's shell: `tar`
/// writes it to the shell's fd 9, the container's stderr. Jobs that break that
/// path — a background process flooding that stream with a forged archive
/// naming a file outside the workdir, a shell whose output the model
/// redirected, fd 9 taken for the model's own use — still get the patch of their real workspace: the forged archive
/// is refused and the engine's archive read takes over (seen at the proxy), and
/// nothing the forged archive names reaches the store. A background process
/// printing all along on the shell's own output does not disturb the path.
#[test]
fn a_job_that_breaks_the_shell_collect_gets_its_real_workspace() {
    let mut b = Batch::new();
    let proxy = counting_proxy(&mut b);
    let job = |b: &mut Batch, name: &str, sabotage: Value| {
        b.job(
            name,
            json!({"task": "t", "artifacts": ["**"]}),
            json!({"steps": [
                {"tool": "terminal", "args": {"command": "echo real > real.txt"}},
                {"tool": "terminal", "args": sabotage},
                {"tool": "finish", "args": {"message": "done"}}
            ]}),
        )
    };
    // A forged archive whose one entry is below a directory that is not the
    // workdir, written to the container's stderr (the stream fd 9 of the shell
    // is; PID 1, docker-init, holds it too) over and over.
    let forge = "mkdir -p /tmp/f/elsewhere && echo evil > /tmp/f/elsewhere/evil.txt \
                 && (cd /tmp/f && tar -cf /tmp/forged.tar elsewhere/evil.txt) \
                 && (while :; do cat /tmp/forged.tar; done > /proc/1/fd/2 2>/dev/null &)";
    let forged = job(&mut b, "forged", json!({"command": forge}));
    // The prompt goes to /dev/null too: the call returns with the command
    // still running, and the shell is not idle at the end.
    let redirected = job(
        &mut b,
        "redirected",
        json!({"command": "exec >/dev/null", "timeout": 1}),
    );
    // The model takes fd 9 for itself: its shell keeps it, so tar's archive
    // goes to that file and never arrives.
    let own_fd = job(&mut b, "ownfd", json!({"command": "exec 9>/tmp/lock"}));
    let noisy = job(
        &mut b,
        "noisy",
        json!({"command": "(while :; do echo noise; sleep 0.01; done) &"}),
    );
    let out = b.run_with(&["--concurrency", "4"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = proxy.counts().snapshot().requests;
    // Reads of the job's own container (not of the one that looks for the
    // image's files at the workdir, `…-seed`).
    let collect_reads = |id: &str| {
        seen.iter()
            .filter(|l| {
                let (m, path) = method_and_path(l);
                m == "GET"
                    && path.ends_with("/archive")
                    && path.contains(&format!("fleet-{id}-"))
                    && !path.contains("-seed/")
            })
            .count()
    };
    for id in [&forged, &redirected, &own_fd, &noisy] {
        assert_eq!(out.result(id)["outcome"], "succeeded", "{id}");
        let patch = b.store_text(id, "patch.diff");
        assert!(
            patch.contains("+++ b/real.txt") && patch.contains("+real"),
            "{id}:\n{patch}"
        );
        assert!(
            !patch.contains("evil") && !patch.contains("noise"),
            "{id}:\n{patch}"
        );
        assert_eq!(containers_for(id), 0, "{id} left a container");
    }
    for (path, _) in b.all_store_files() {
        assert!(
            !path.contains("evil"),
            "a forged entry reached the store: {path}"
        );
    }
    for id in [&forged, &redirected, &own_fd] {
        assert_eq!(
            collect_reads(id),
            1,
            "{id}: its broken shell collect was not replaced by the engine's read:\n{}",
            seen.join("\n")
        );
    }
    // Noise on the shell's output does not reach the side channel.
    assert_eq!(collect_reads(&noisy), 0, "{}", seen.join("\n"));
}
