//! The terminal's persistent shell session against real workspaces: the
//! busybox-only test image in Docker (so `sh`, not bash) and the host for `local`.
//! What the session did is checked from outside it — `docker exec` through the
//! Docker CLI, or a plain `sh` on the host — never only by what the terminal says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_fleet::agent::tools::terminal::{Args, Terminal};
use agent_fleet::job::Limits;
use agent_fleet::workspace::docker::DockerBackend;
use agent_fleet::workspace::local::LocalBackend;
use agent_fleet::workspace::{Backend, Workspace, WorkspaceSpec};
use serde_json::json;

use crate::util::{Batch, TEST_IMAGE};

/// Removes the job's containers however the test ends.
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=fleet.job_id={}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f", id])
                    .output();
            }
        }
    }
}

fn spec(job_id: &str) -> WorkspaceSpec {
    WorkspaceSpec {
        job_id: job_id.to_string(),
        attempt: 1,
        worker_id: "it-worker".into(),
        image: TEST_IMAGE.into(),
        workdir: "/workspace".into(),
        env: BTreeMap::new(),
        memory_mb: 256,
        cpus: 1.0,
        pids: 128,
        network: "none".into(),
        user: None,
        read_only_root: false,
        disk_mb: None,
    }
}

/// A workspace of either backend, and what keeps its leftovers from outliving
/// the test.
struct Ws {
    ws: Workspace,
    _containers: Option<Containers>,
    _root: Option<tempfile::TempDir>,
}

async fn docker(name: &str) -> Ws {
    let job_id = format!(
        "sh-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let guard = Containers(job_id.clone());
    let backend = DockerBackend::connect(&format!("host-{job_id}"))
        .await
        .expect("docker reachable");
    let ws = Backend::Docker(backend)
        .start(&spec(&job_id))
        .await
        .expect("workspace starts (is the test image built?)");
    Ws {
        ws,
        _containers: Some(guard),
        _root: None,
    }
}

async fn local(name: &str) -> Ws {
    let root = tempfile::tempdir().expect("tempdir");
    let ws = Backend::Local(LocalBackend::new(root.path().to_path_buf()))
        .start(&spec(&format!("sh-{name}")))
        .await
        .expect("local workspace starts");
    Ws {
        ws,
        _containers: None,
        _root: Some(root),
    }
}

/// Runs `script` in the workspace from outside the session: a new `docker exec`
/// through the CLI, or a new `sh` on the host, in the workdir.
fn outside(ws: &Workspace, script: &str) -> String {
    let out = match ws {
        Workspace::Docker(d) => std::process::Command::new("docker")
            .args([
                "exec",
                "-w",
                ws.workdir(),
                d.container_name(),
                "sh",
                "-c",
                script,
            ])
            .output(),
        Workspace::Local(_) => std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(ws.workdir())
            .output(),
    }
    .expect("outside command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(command: &str) -> Args {
    Args {
        command: command.into(),
        timeout: None,
        is_input: None,
        reset: None,
    }
}

fn input(command: &str) -> Args {
    Args {
        is_input: Some(true),
        ..cmd(command)
    }
}

fn limits(quiet_secs: u64) -> Limits {
    Limits {
        no_output_timeout_secs: quiet_secs,
        ..Limits::default()
    }
}

// ---- the checks both backends must pass ----

async fn check_state_persists(ws: &Workspace) {
    let l = limits(30);
    let mut t = Terminal::new(ws);
    let o = t
        .call(ws, &l, cmd("stamp() { printf '%s-%s\\n' \"$1\" \"$word\" > proof; }; word=unexported; mkdir -p d && cd d"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    let cwd_line = format!("[Current working directory: {}/d]", ws.workdir());
    assert!(o.content.contains(&cwd_line), "{}", o.content);
    // The function and the unexported variable of the call before, in the cwd
    // of the call before.
    let o = t
        .call(ws, &l, cmd("stamp made; env | grep -c '^word=' || true"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(
        o.content.starts_with("0\n"),
        "the variable is not exported: {}",
        o.content
    );
    assert_eq!(outside(ws, "cat d/proof"), "made-unexported\n");
    // `exit` ends the shell; the model is told and the next call has a new one.
    let o = t.call(ws, &l, cmd("exit 4")).await.unwrap();
    assert_eq!(o.exit_code, Some(4), "{}", o.content);
    assert!(o.content.contains("The shell exited"), "{}", o.content);
    let o = t.call(ws, &l, cmd("pwd; echo \"[$word]\"")).await.unwrap();
    assert!(
        o.content.starts_with(&format!("{}\n[]\n", ws.workdir())),
        "{}",
        o.content
    );
}

async fn check_quiet_then_more(ws: &Workspace) {
    let l = limits(2);
    let mut t = Terminal::new(ws);
    let started = Instant::now();
    let o = t
        .call(
            ws,
            &l,
            cmd("echo begun; sleep 6; echo ended > late; echo ended; (exit 3)"),
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    assert!(o.timed_out);
    assert!(
        o.content.starts_with("begun\n") && o.content.contains("still running"),
        "{}",
        o.content
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "returned after the quiet spell"
    );
    // The command did go on running: its file appears later, seen from outside.
    assert_eq!(outside(ws, "cat late 2>/dev/null"), "");
    let o = t
        .call(
            ws,
            &l,
            Args {
                timeout: Some(20.0),
                ..input("")
            },
        )
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(3), "{}", o.content);
    assert!(
        o.content
            .starts_with("ended\n[The command completed with exit code 3.]"),
        "{}",
        o.content
    );
    assert_eq!(outside(ws, "cat late"), "ended\n");
}

async fn check_ctrl_c(ws: &Workspace) {
    let l = limits(1);
    let mut t = Terminal::new(ws);
    t.call(ws, &l, cmd("kept=yes")).await.unwrap();
    let o = t
        .call(ws, &l, cmd("sleep 377; touch after-sleep"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let sleeping = "ps -o args 2>/dev/null | grep -c '^sleep 377' || true";
    assert_eq!(outside(ws, sleeping).trim(), "1", "the command runs");
    let o = t.call(ws, &l, input("C-c")).await.unwrap();
    assert_eq!(o.exit_code, Some(130), "{}", o.content);
    assert_eq!(outside(ws, sleeping).trim(), "0", "the command is gone");
    // A loop of builtins has no process of its own to signal: the shell stops it.
    let o = t
        .call(ws, &l, cmd("while :; do :; done; touch after-loop"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t.call(ws, &l, input("C-c")).await.unwrap();
    assert_eq!(o.exit_code, Some(130), "{}", o.content);
    assert_eq!(
        outside(ws, "ls after-* 2>/dev/null"),
        "",
        "the rest of each line was abandoned"
    );
    let o = t.call(ws, &l, cmd("echo $kept")).await.unwrap();
    assert!(
        o.content.starts_with("yes\n"),
        "the shell lived on: {}",
        o.content
    );
}

/// What a hostile (or clumsy) command does to the session: binary output, a
/// forged end-of-command record, `exit` with a background process holding the
/// output open, `exec` of a silent process — the session stays in step, and a
/// dead or replaced shell is replaced.
async fn check_hostile(ws: &Workspace, secs: u32) {
    let l = limits(1);
    let mut t = Terminal::new(ws);
    let o = t
        .call(ws, &l, cmd("printf 'a\\000\\377b\\n'"))
        .await
        .unwrap();
    assert!(o.content.starts_with("a\0\u{FFFD}b\n"), "{:?}", o.content);
    // The prompt holds the marker; a command that prints its expansion ends its
    // own call early, and the real record, when it comes, is skipped.
    let o = t
        .call(
            ws,
            &l,
            cmd("eval \"printf '%s' \\\"$PS1\\\"\"; sleep 1; echo tail"),
        )
        .await
        .unwrap();
    assert!(o.exit_code.is_some(), "{}", o.content);
    let o = t
        .call(
            ws,
            &l,
            Args {
                timeout: Some(10.0),
                ..cmd("echo next; (exit 7)")
            },
        )
        .await
        .unwrap();
    assert!(o.content.starts_with("tail\nnext\n"), "{}", o.content);
    assert_eq!(o.exit_code, Some(7), "{}", o.content);
    let o = t.call(ws, &l, cmd("sleep 30 & exit 5")).await.unwrap();
    assert_eq!(o.exit_code, Some(5), "{}", o.content);
    assert!(o.content.contains("The shell exited"), "{}", o.content);
    let o = t
        .call(ws, &l, cmd(&format!("exec sleep {secs}")))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t
        .call(
            ws,
            &l,
            Args {
                reset: Some(true),
                ..cmd("echo after-reset")
            },
        )
        .await
        .unwrap();
    assert!(o.content.contains("after-reset\n"), "{}", o.content);
    assert_eq!(
        outside(
            ws,
            &format!(
                "(ps -e -o args 2>/dev/null || ps -o args) | grep -c '^sleep {secs}$' || true"
            )
        )
        .trim(),
        "0"
    );
}

/// Typed input reaches the running command; `C-d` ends its input, and the next
/// command runs in a new shell.
async fn check_input_and_end_of_input(ws: &Workspace) {
    let l = limits(1);
    let mut t = Terminal::new(ws);
    let o = t
        .call(ws, &l, cmd("read -r name; echo \"hello $name\""))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    let o = t.call(ws, &l, input("world")).await.unwrap();
    assert!(o.content.starts_with("hello world\n"), "{}", o.content);
    let o = t
        .call(ws, &l, cmd("cat > typed.txt; echo cat-ended"))
        .await
        .unwrap();
    assert_eq!(o.exit_code, Some(-1), "{}", o.content);
    t.call(ws, &l, input("line one")).await.unwrap();
    let o = t
        .call(
            ws,
            &l,
            Args {
                timeout: Some(10.0),
                ..input("C-d")
            },
        )
        .await
        .unwrap();
    assert!(o.content.contains("cat-ended"), "{}", o.content);
    assert_eq!(outside(ws, "cat typed.txt"), "line one\n");
    let o = t.call(ws, &l, cmd("echo again")).await.unwrap();
    assert!(
        o.content.contains("new shell") && o.content.contains("again\n"),
        "{}",
        o.content
    );
}

// ---- Docker (busybox `sh`) ----

#[tokio::test]
async fn docker_shell_state_persists() {
    let w = docker("state").await;
    check_state_persists(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_quiet_command_is_still_running_then_is_input_gets_the_rest() {
    let w = docker("quiet").await;
    check_quiet_then_more(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_ctrl_c_stops_a_running_command() {
    let w = docker("ctrlc").await;
    check_ctrl_c(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_hostile_commands_keep_the_session_in_step() {
    let w = docker("hostile").await;
    check_hostile(&w.ws, 347).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_input_and_end_of_input_reach_the_command() {
    let w = docker("input").await;
    check_input_and_end_of_input(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

/// 200 s of wall time, nearly no CPU: runs beside the other tests.
#[tokio::test]
async fn docker_200_second_command_with_timeout_300_runs_to_completion() {
    let w = docker("long").await;
    let ws = &w.ws;
    let mut t = Terminal::new(ws);
    let started = Instant::now();
    let o = t
        .call(
            ws,
            &Limits::default(),
            Args {
                timeout: Some(300.0),
                ..cmd("sleep 200; echo finished | tee long-done")
            },
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(o.exit_code, Some(0), "{}", o.content);
    assert!(o.content.starts_with("finished\n"), "{}", o.content);
    assert!(
        took >= Duration::from_secs(200) && took < Duration::from_secs(240),
        "{took:?}"
    );
    assert_eq!(outside(ws, "cat long-done"), "finished\n");
    w.ws.destroy().await.unwrap();
}

// ---- local ----

#[tokio::test]
async fn local_shell_state_persists() {
    let w = local("state").await;
    check_state_persists(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_quiet_command_is_still_running_then_is_input_gets_the_rest() {
    let w = local("quiet").await;
    check_quiet_then_more(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_ctrl_c_stops_a_running_command() {
    let w = local("ctrlc").await;
    check_ctrl_c(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_hostile_commands_keep_the_session_in_step() {
    // Another number than the Docker test's: the host sees container processes.
    let w = local("hostile").await;
    check_hostile(&w.ws, 353).await;
    w.ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_input_and_end_of_input_reach_the_command() {
    let w = local("input").await;
    check_input_and_end_of_input(&w.ws).await;
    w.ws.destroy().await.unwrap();
}

// ---- through `fleet run` and the scripted LLM ----

/// A whole job: the model's calls reach one shell, a still-running command is
/// no repeat for stuck detection, and the job succeeds.
#[test]
fn a_job_drives_one_shell_through_fleet_run() {
    let mut b = Batch::new();
    let poll = json!({"tool": "terminal", "args": {"command": "", "is_input": true, "timeout": 3}});
    let id = b.job(
        "shell",
        json!({"task": "use the shell", "limits": {"no_output_timeout_secs": 1}}),
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "note() { echo \"$*\" >> notes.txt; }; n=1"}},
            {"tool": "terminal", "args": {"command": "note first $n; sleep 8; note second; echo noted"}},
            poll, poll, poll,
            {"tool": "terminal", "args": {"command": "sleep 300"}},
            {"tool": "terminal", "args": {"command": "C-c", "is_input": true}},
            {"tool": "finish", "args": {"message": "done"}}
        ]}),
    );
    let out = b.run();
    let r = out.result(&id);
    assert_eq!(r["outcome"], "succeeded", "{r}\n{}", out.stderr);
    let patch = String::from_utf8(b.store_file(&id, "patch.diff").unwrap()).unwrap();
    assert!(
        patch.contains("+first 1") && patch.contains("+second"),
        "{patch}"
    );
    let events = b.store_text(&id, "events.jsonl");
    let obs: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "ObservationEvent" && e["tool_name"] == "terminal")
        .collect();
    assert_eq!(obs[1]["exit_code"], -1, "{}", obs[1]);
    assert!(
        obs.iter()
            .any(|o| o["exit_code"] == 0 && o["content"].as_str().unwrap().starts_with("noted\n")),
        "{obs:#?}"
    );
    assert_eq!(
        obs.last().unwrap()["exit_code"],
        130,
        "{}",
        obs.last().unwrap()
    );
}
