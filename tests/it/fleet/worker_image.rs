//! The worker image (`scripts/build-images.sh worker`, from the repository's
//! Dockerfile) run as a worker the way Compose runs it: the host's Docker socket
//! mounted, root to open it. It reaches the test broker, S3 server and scripted
//! LLM on 127.0.0.1 through the host's network, and runs a job end to end.

use std::process::Command;

use agent_fleet::job::State;

use super::harness::{Fleet, WAIT, few_steps, poll};

const IMAGE: &str = "agent-fleet/worker:latest";

/// The worker container, removed (by name) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn logs(name: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", name])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_worker_image_runs_a_job() {
    let inspect = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{IMAGE} is missing: run `scripts/build-images.sh worker`"
    );
    let f = Fleet::new();
    let name = format!("fleet-it-{}", f.prefix.trim_end_matches('.'));
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--name",
        &name,
        // The host's loopback services; the host's pid namespace, so the worker's
        // stale-container sweep judges other workers' pids correctly.
        "--network",
        "host",
        "--pid",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "--user",
        "root",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (k, v) in f.env() {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(
        [
            IMAGE,
            "worker",
            "--metrics-addr",
            "127.0.0.1:0",
            "--concurrency",
            "1",
        ]
        .map(String::from),
    );
    let out = Command::new("docker").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _c = Container(name.clone());
    // "fleet worker <id>: 1 slots, metrics on …"
    let worker_id = poll(
        std::time::Duration::from_secs(60),
        "the containerised worker to start",
        || {
            logs(&name).lines().find_map(|l| {
                let rest = l.strip_prefix("fleet worker ")?;
                let (id, tail) = rest.split_once(": ")?;
                tail.contains(" slots").then(|| id.to_string())
            })
        },
        || logs(&name),
    );
    let (job, script) = few_steps("from-the-image");
    let id = f.add_job("img", job, script);
    f.submit();
    let s = &f.wait_terminal(std::slice::from_ref(&id), WAIT)[0];
    assert_eq!(s.state, State::Succeeded, "{:?}\n{}", s.error, logs(&name));
    // The run was the container's: the status record names its worker id.
    let ran_by = s
        .history
        .iter()
        .find(|t| t.state == State::Running)
        .and_then(|t| t.worker.clone());
    assert_eq!(
        ran_by.as_deref(),
        Some(worker_id.as_str()),
        "{}",
        logs(&name)
    );
    let artifact = f.file(&id, "artifacts/out.txt").expect("artifact");
    assert_eq!(String::from_utf8_lossy(&artifact).trim(), "from-the-image");
}
