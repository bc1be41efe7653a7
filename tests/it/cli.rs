//! Bad input to the CLI: one line naming the job and field, exit code 2, nothing started.

use std::process::Command;

use crate::util::fleet;

fn run_file(text: &str) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.json");
    std::fs::write(&jobs, text).unwrap();
    let store = dir.path().join("store");
    let out = Command::new(fleet())
        .args([
            "run",
            jobs.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
        dir,
    )
}

fn assert_rejected(text: &str, must_contain: &[&str]) {
    let (code, stderr, dir) = run_file(text);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for s in must_contain {
        assert!(stderr.contains(s), "{stderr:?} lacks {s:?}");
    }
    // Nothing started: no job was written to the store.
    let jobs = dir.path().join("store/jobs");
    assert!(!jobs.exists() || std::fs::read_dir(jobs).unwrap().next().is_none());
}

#[test]
fn malformed_json() {
    assert_rejected(r#"[{"id": "a", "task": "t""#, &["not valid JSON"]);
}

#[test]
fn unknown_field() {
    assert_rejected(
        r#"[{"id": "a", "task": "t"}, {"id": "b", "task": "t", "limits": {"max_iter": 3}}]"#,
        &["job 1", "\"b\"", "max_iter"],
    );
}

#[test]
fn missing_task() {
    assert_rejected(
        r#"[{"id": "a", "image": "x"}]"#,
        &["job 0", "\"a\"", "task"],
    );
}

#[test]
fn duplicate_ids() {
    assert_rejected(
        r#"[{"id": "a", "task": "t"}, {"id": "a", "task": "u"}]"#,
        &["job 1", "duplicate", "\"a\""],
    );
}

#[test]
fn image_with_spaces() {
    assert_rejected(
        r#"[{"id": "a", "task": "t", "image": "my image"}]"#,
        &["job 0", "image", "my image"],
    );
}

#[test]
fn missing_file_and_bad_flag() {
    let out = Command::new(fleet())
        .args(["run", "/nonexistent/jobs.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(fleet())
        .args(["run", "x.json", "--concurrency", "zero"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
