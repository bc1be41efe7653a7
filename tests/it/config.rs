//! Operability of the binary: every unusable setting is a one-line error naming
//! the variable (exit 2), logs carry no ANSI codes off a terminal, records of
//! crates that log through `log` reach the log, and `fleet run` treats SIGTERM as
//! Ctrl-C and exits at once on a second one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{Batch, containers_for, fleet};

/// `fleet <args>` with one variable set; (exit code, stderr).
fn fleet_with(args: &[&str], var: &str, value: &str) -> (i32, String) {
    let out = Command::new(fleet())
        .args(args)
        .env(var, value)
        .env("FLEET_QUEUE", "amqp://guest:guest@127.0.0.1:18297/%2f")
        .env("FLEET_STORE", "/nonexistent/never-created")
        .stdin(Stdio::null())
        .output()
        .expect("spawn fleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn every_bad_setting_is_one_line_naming_the_variable_exit_2() {
    let cases = [
        ("FLEET_LEASE_SECS", "abc"),
        ("FLEET_LEASE_SECS", "0"),
        ("FLEET_MAX_ATTEMPTS", "0"),
        ("FLEET_MAX_ATTEMPTS", "three"),
        ("FLEET_RETRY_TIERS_SECS", "5,x,300"),
        ("FLEET_RETRY_TIERS_SECS", "5,-1"),
        ("FLEET_LLM_RETRY_MIN_SECS", "-1"),
        ("FLEET_LLM_RETRY_MIN_SECS", "8s"),
        ("FLEET_IMAGE_PULL", "sometimes"),
        ("FLEET_IMAGE_PULL_TIMEOUT_SECS", "soon"),
        ("FLEET_LOG_FORMAT", "xml"),
        ("FLEET_S3_ENDPOINT", "not a url"),
        ("FLEET_WEBHOOK_URL", "ftp://example.invalid/"),
        ("LLM_BASE_URL", "localhost:8080"),
        ("FLEET_CONCURRENCY", "many"),
    ];
    for (var, value) in cases {
        for cmd in [&["worker"][..], &["status"][..]] {
            let started = Instant::now();
            let (code, stderr) = fleet_with(cmd, var, value);
            assert_eq!(code, 2, "{var}={value} {cmd:?}: {stderr}");
            let lines: Vec<&str> = stderr.trim().lines().collect();
            assert_eq!(lines.len(), 1, "{var}={value}: {stderr}");
            assert!(
                lines[0].contains(&format!("{var}={value:?}")),
                "{var}={value}: {}",
                lines[0]
            );
            // Nothing was contacted first (the broker and store given do not exist).
            assert!(started.elapsed() < Duration::from_secs(5), "{var}: slow");
        }
    }
}

fn one_job_batch() -> (Batch, String) {
    let mut b = Batch::new();
    let id = b.job(
        "log",
        json!({"task": "t"}),
        json!({"steps": [{"tool": "finish", "args": {"message": "done"}}]}),
    );
    (b, id)
}

#[test]
fn logs_off_a_terminal_have_no_ansi_and_log_records_are_bridged() {
    let (mut b, id) = one_job_batch();
    // Info logs of the fleet, and the `log`-crate records of reqwest (the LLM client).
    b.env("RUST_LOG", "info,reqwest=trace");
    let out = b.run_with(&["--workspace", "local"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.result(&id)["outcome"], "succeeded");
    assert!(out.stderr.contains(" INFO "), "{}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI codes in:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.lines().any(|l| l.contains("reqwest::")),
        "no reqwest (log crate) record in:\n{}",
        out.stderr
    );
}

#[test]
fn sigterm_cancels_fleet_run_like_ctrl_c() {
    let mut b = Batch::new();
    let id = b.job(
        "term",
        json!({"task": "t", "limits": {"command_timeout_secs": 120}}),
        json!({"steps": [{"tool": "terminal", "args": {"command": "sleep 60"}}]}),
    );
    b.signals = vec![(Duration::from_secs(4), libc::SIGTERM)];
    let started = Instant::now();
    let out = b.run();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.result(&id)["outcome"], "cancelled", "{}", out.stderr);
    assert_eq!(containers_for(&id), 0, "container left for {id}");
}

#[test]
fn a_second_interrupt_exits_fleet_run_at_once() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let id = format!("twice-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(
        dir.path().join(format!("scripts/{id}.json")),
        json!({"steps": [{"tool": "terminal", "args": {"command": "sleep 60"}}]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("jobs.json"),
        json!([{"id": id, "task": "t", "image": crate::util::TEST_IMAGE,
                "llm": {"model": id}, "limits": {"command_timeout_secs": 120}}])
        .to_string(),
    )
    .unwrap();
    let mut child = Command::new(fleet())
        .arg("run")
        .arg(dir.path().join("jobs.json"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("--mock-llm")
        .arg(dir.path().join("scripts"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleet run");
    let pid = child.id() as libc::pid_t;
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // The job's container is up once its command runs; then the first interrupt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers_for(&id) == 0 {
        assert!(Instant::now() < deadline, "no container for {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let mut seen = Vec::new();
    let started = Instant::now();
    for line in stderr.lines() {
        let line = line.unwrap();
        let first = line.starts_with("interrupted: cancelling");
        seen.push(line);
        if first {
            // The second one while the first is still being handled.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        seen.iter().any(|l| l.contains("interrupted again")),
        "{seen:#?}"
    );
    // Exiting at once leaves the container to the next run's start-up sweep; this
    // test cleans up after itself.
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=fleet.job_id={id}")])
        .output()
        .unwrap();
    for c in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
        let _ = Command::new("docker").args(["rm", "-f", c]).output();
    }
}
