//! The local backend: the shared checks, plus its own rules (paths confined to the
//! job directory, process groups, the directory removed on destroy).

use agent_fleet::workspace::local::LocalBackend;
use agent_fleet::workspace::{Backend, Workspace, WorkspaceError};

use super::*;

async fn local(name: &str) -> (Workspace, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = Backend::Local(LocalBackend::new(root.path().to_path_buf()));
    let ws = backend
        .start(&spec(&unique_id(name)))
        .await
        .expect("local workspace starts");
    (ws, root)
}

#[tokio::test]
async fn exec_env_and_cwd() {
    let (ws, _root) = local("exec").await;
    check_exec(&ws).await;
    let home = run(&ws, r#"printf '%s' "$HOME""#).await.output;
    assert!(
        ws.workdir().starts_with(&home),
        "HOME is the job dir: {home}"
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn timeout_kills_the_command_tree() {
    let (ws, _root) = local("timeout").await;
    // Own check: `ps` on the host lists everyone's processes; look for this job's only.
    let started = Instant::now();
    let out = ws
        .exec(
            "echo before; sleep 100 & sleep 101; echo after",
            ws.workdir(),
            2 * SECOND,
            1000,
        )
        .await
        .unwrap();
    assert!(started.elapsed() < 10 * SECOND);
    assert!(out.timed_out && out.exit_code.is_none());
    assert_eq!(out.output, "before\n");
    let out = run(&ws, "echo still usable").await;
    assert_eq!(out.output, "still usable\n");
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn background_processes_do_not_hold_the_result() {
    let (ws, _root) = local("bg").await;
    let started = Instant::now();
    let out = run(&ws, "echo $$ > pid; sleep 30 & echo $! > bg; echo done").await;
    assert!(
        started.elapsed() < 5 * SECOND,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.exit_code, Some(0));
    let bg = ws
        .read_file(&format!("{}/bg", ws.workdir()))
        .await
        .unwrap()
        .unwrap();
    let bg: i32 = String::from_utf8_lossy(&bg).trim().parse().unwrap();
    ws.destroy().await.unwrap();
    // Destroy killed the background process (it may linger as a zombie briefly).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "{state}");
}

#[tokio::test]
async fn a_cancelled_command_is_killed() {
    let (ws, _root) = local("cancel").await;
    let pid_file = format!("{}/pid", ws.workdir());
    let cancelled = tokio::time::timeout(
        SECOND,
        ws.exec(
            "echo $$ > pid; exec sleep 100",
            ws.workdir(),
            60 * SECOND,
            100,
        ),
    )
    .await;
    assert!(cancelled.is_err(), "the exec future was dropped half-way");
    let pid = ws.read_file(&pid_file).await.unwrap().unwrap();
    let pid: i32 = String::from_utf8_lossy(&pid).trim().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "{state}");
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn output_flood_stays_bounded() {
    let (ws, _root) = local("flood").await;
    check_flood(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn files() {
    let (ws, _root) = local("files").await;
    check_files(&ws).await;
    assert!(matches!(
        ws.read_file("/etc/passwd").await,
        Err(WorkspaceError::Path { .. })
    ));
    let escape = format!("{}/../../x", ws.workdir());
    assert!(matches!(
        ws.write_file(&escape, b"x").await,
        Err(WorkspaceError::Path { .. })
    ));
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn put_tar_and_snapshot() {
    let (ws, _root) = local("snapshot").await;
    check_tar_and_snapshot(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn destroy_removes_the_directory() {
    let (ws, root) = local("destroy").await;
    let job_dir = std::path::Path::new(ws.workdir())
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(job_dir.starts_with(root.path().canonicalize().unwrap()));
    run(
        &ws,
        "mkdir -p ro/inner && touch ro/inner/f && chmod 500 ro/inner",
    )
    .await;
    ws.destroy().await.unwrap();
    assert!(!job_dir.exists());
}
