//! What the fleet tests use beside a `Fleet`: a webhook receiver, the Docker
//! CLI's view of a job's containers, status-history counts and job builders.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use agent_fleet::job::{State, StatusRecord};
use serde_json::{Value, json};

use super::Fleet;
use crate::util::{TEST_IMAGE, try_container_ids};

/// Records the webhook deliveries it receives (the `X-Fleet-Delivery` header of
/// each POST), answering 200: an observer outside the fleet.
pub struct HookReceiver {
    pub url: String,
    pub received: std::sync::Arc<Mutex<Vec<String>>>,
}

impl HookReceiver {
    pub fn start(f: &Fleet) -> HookReceiver {
        use axum::routing::post;
        let received: std::sync::Arc<Mutex<Vec<String>>> = Default::default();
        let got = received.clone();
        let listener =
            f.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap| {
                let got = got.clone();
                async move {
                    let id = headers
                        .get("x-fleet-delivery")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    got.lock().unwrap().push(id);
                    "ok"
                }
            }),
        );
        f.rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HookReceiver { url, received }
    }

    pub fn deliveries(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

pub(super) fn check_docker() {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE])
        .output()
        .expect("the docker CLI (Docker is required)");
    assert!(
        out.status.success(),
        "Docker or the image {TEST_IMAGE} is missing (run scripts/build-images.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `docker ps -a` of the job's containers, for diagnostics.
pub fn docker_ps(job_id: &str) -> String {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=fleet.job_id={job_id}"),
            "--format",
            "{{.ID}} {{.Names}} {{.Status}} {{.Labels}}",
        ])
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Removes every container labelled with the job id (test teardown).
pub fn remove_containers(job_id: &str) {
    for cid in try_container_ids(job_id).unwrap_or_default() {
        let _ = Command::new("docker")
            .args(["rm", "-f", &cid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The states of a status history, in order.
pub fn states(s: &StatusRecord) -> Vec<State> {
    s.history.iter().map(|t| t.state).collect()
}

/// How many transitions to a terminal state a history holds.
pub fn terminal_transitions(s: &StatusRecord) -> usize {
    s.history.iter().filter(|t| t.state.is_terminal()).count()
}

/// How many `running` transitions (runs started) a history holds.
pub fn runs(s: &StatusRecord) -> usize {
    s.history
        .iter()
        .filter(|t| t.state == State::Running)
        .count()
}

/// A job of a few steps that ends with `finish`: writes a file, runs a command,
/// finishes. `marker` lands in `out.txt`.
pub fn few_steps(marker: &str) -> (Value, Value) {
    (
        json!({"task": format!("write {marker}"), "artifacts": ["out.txt"]}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": format!("echo {marker} > out.txt")}},
            {"tool": "think", "args": {"thought": "check it"}},
            {"tool": "terminal", "args": {"command": "cat out.txt"}},
            {"tool": "finish", "args": {"message": format!("wrote {marker}")}}
        ], "usage": {"prompt_tokens": 100, "completion_tokens": 10}}),
    )
}

/// A job whose first command takes `secs` seconds, then finishes.
pub fn slow(secs: u64) -> (Value, Value) {
    (
        json!({"task": "sleep", "limits": {"command_timeout_secs": 600}}),
        json!({"steps": [
            // With a `timeout`, the call waits for the whole command (no early
            // return after a quiet spell).
            {"tool": "terminal", "args": {"command": format!("sleep {secs} && echo slept > slept.txt"), "timeout": secs + 60}},
            {"tool": "finish", "args": {"message": "slept"}}
        ]}),
    )
}
