//! The Docker backend: the shared checks, plus what only a container has (limits,
//! labels, stale cleanup, a missing image).

use agent_fleet::workspace::docker::DockerBackend;
use agent_fleet::workspace::{Backend, PathKind, Workspace, WorkspaceError};

use super::*;

/// Removes the job's containers however the test ends (also on a failed assert).
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        for id in crate::util::container_ids(&self.0) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output();
        }
    }
}

/// A Docker workspace for one test, with its own host prefix so parallel tests
/// never see each other's containers.
async fn docker(name: &str) -> (Backend, Workspace, Containers, String) {
    let job_id = unique_id(name);
    let guard = Containers(job_id.clone());
    let backend = DockerBackend::connect(&format!("host-{job_id}"))
        .await
        .expect("docker reachable");
    let backend = Backend::Docker(backend);
    let ws = backend
        .start(&spec(&job_id))
        .await
        .expect("workspace starts (is the test image built?)");
    (backend, ws, guard, job_id)
}

#[tokio::test]
async fn exec_env_and_cwd() {
    let (_b, ws, _g, _) = docker("exec").await;
    check_exec(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn timeout_kills_the_command_tree() {
    let (_b, ws, _g, _) = docker("timeout").await;
    check_timeout(&ws).await;
    ws.destroy().await.unwrap();
}

/// With a non-root job user a root exec has no capabilities, so the kill runs as
/// that user: a timed-out command's tree must still die. Files the worker writes
/// are the user's.
#[tokio::test]
async fn timeout_kills_the_command_tree_of_a_job_user() {
    let job_id = unique_id("timeout-user");
    let _g = Containers(job_id.clone());
    let backend = Backend::Docker(
        DockerBackend::connect(&format!("host-{job_id}"))
            .await
            .expect("docker reachable"),
    );
    let mut s = spec(&job_id);
    s.user = Some("1000:1000".into());
    let ws = backend.start(&s).await.expect("workspace starts");
    check_timeout(&ws).await;
    ws.write_file("/workspace/new/f.txt", b"x").await.unwrap();
    let out = run(&ws, "id -u; stat -c '%u:%g %n' . new new/f.txt").await;
    assert_eq!(
        out.output, "1000\n1000:1000 .\n1000:1000 new\n1000:1000 new/f.txt\n",
        "{out:?}"
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn output_flood_stays_bounded() {
    let (_b, ws, _g, _) = docker("flood").await;
    check_flood(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn files_through_the_archive_api() {
    let (_b, ws, _g, _) = docker("files").await;
    check_files(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn put_tar_and_snapshot() {
    let (_b, ws, _g, _) = docker("snapshot").await;
    check_tar_and_snapshot(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn destroy_leaves_no_container() {
    let (backend, ws, _g, job_id) = docker("destroy").await;
    assert_eq!(crate::util::container_ids(&job_id).len(), 1);
    assert!(backend.ping().await);
    ws.destroy().await.unwrap();
    assert!(crate::util::container_ids(&job_id).is_empty());
}

#[tokio::test]
async fn a_dropped_workspace_is_removed_in_the_background() {
    let (_b, ws, _g, job_id) = docker("dropped").await;
    drop(ws);
    let until = Instant::now() + 30 * SECOND;
    while !crate::util::container_ids(&job_id).is_empty() {
        assert!(Instant::now() < until, "container still there after drop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn limits_and_labels_are_applied() {
    let (_b, ws, _g, job_id) = docker("limits").await;
    let ids = crate::util::container_ids(&job_id);
    let out = std::process::Command::new("docker")
        .args(["inspect", &ids[0]])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hc = &v[0]["HostConfig"];
    assert_eq!(hc["Memory"], 256 * 1024 * 1024);
    assert_eq!(hc["PidsLimit"], 128);
    assert_eq!(hc["NanoCpus"], 1_000_000_000i64);
    assert_eq!(hc["NetworkMode"], "none");
    assert_eq!(hc["Privileged"], false);
    assert_eq!(hc["CapDrop"][0], "ALL");
    assert!(
        hc["SecurityOpt"].to_string().contains("no-new-privileges"),
        "{}",
        hc["SecurityOpt"]
    );
    let labels = &v[0]["Config"]["Labels"];
    assert_eq!(labels["agent-fleet"], "1");
    assert_eq!(labels["fleet.attempt"], "1");
    assert_eq!(labels["fleet.worker_id"], "it-worker");
    assert_eq!(labels["fleet.pid"], std::process::id().to_string());
    // The limits bite, and the workspace outlives them. The pids limit (128) stops
    // a loop of background sleeps; the command then blocks without forking (on a
    // fifo) until it times out, and its kill must work with no pids left.
    let out = ws
        .exec(
            "mkfifo /tmp/block; sh -c 'i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done'; read x </tmp/block",
            "/",
            5 * SECOND,
            2000,
        )
        .await
        .unwrap();
    assert!(
        out.output.contains("can't fork") && out.timed_out,
        "{out:?}"
    );
    let ps = run(&ws, "ps -o args").await.output;
    assert!(!ps.contains("sleep 60"), "{ps}");
    // The memory limit (256 MB): a shell holding 400 MB is OOM-killed (128 + 9).
    let out = ws
        .exec(
            r#"x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived"#,
            "/",
            60 * SECOND,
            2000,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(137), "{out:?}");
    assert!(!out.output.contains("survived"));
    assert_eq!(run(&ws, "echo alive").await.output, "alive\n");
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn unknown_image_is_not_retryable() {
    let job_id = unique_id("noimage");
    let _g = Containers(job_id.clone());
    // Not pulled (the registry it names is unknown here): the engine's own 404.
    let never = agent_fleet::workspace::docker::PullSettings {
        policy: agent_fleet::workspace::docker::PullPolicy::Never,
        ..Default::default()
    };
    let backend = Backend::Docker(
        DockerBackend::connect_with("host-noimage", never)
            .await
            .expect("docker reachable"),
    );
    let mut s = spec(&job_id);
    s.image = "agent-fleet/no-such-image:never".into();
    let err = backend.start(&s).await.err().expect("start must fail");
    assert!(
        matches!(err, WorkspaceError::ImageNotFound { .. }),
        "{err:?}"
    );
    assert!(!err.retryable());
    assert!(err.to_string().contains("agent-fleet/no-such-image:never"));
    assert!(crate::util::container_ids(&job_id).is_empty());
}

#[tokio::test]
async fn workdir_is_created_and_a_file_in_its_place_fails_start() {
    let job_id = unique_id("workdir");
    let _g = Containers(job_id.clone());
    let backend = Backend::Docker(
        DockerBackend::connect(&format!("host-{job_id}"))
            .await
            .unwrap(),
    );
    let mut s = spec(&job_id);
    s.workdir = "/srv/deep/work".into();
    let ws = backend.start(&s).await.unwrap();
    assert_eq!(ws.workdir(), "/srv/deep/work");
    assert_eq!(
        ws.stat("/srv/deep/work").await.unwrap(),
        Some(PathKind::Dir)
    );
    ws.destroy().await.unwrap();

    s.workdir = "/bin/busybox".into();
    assert!(backend.start(&s).await.is_err());
    assert!(
        crate::util::container_ids(&job_id).is_empty(),
        "a failed start leaves nothing behind"
    );
}

#[tokio::test]
async fn cleanup_stale_removes_only_dead_owners() {
    let job_id = unique_id("stale");
    let _g = Containers(job_id.clone());
    let prefix = format!("host-{job_id}");
    let backend = Backend::Docker(DockerBackend::connect(&prefix).await.unwrap());
    // A live one: ours.
    let live = backend.start(&spec(&job_id)).await.unwrap();
    // A dead one: labelled with the pid of a process that has exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let out = std::process::Command::new("docker")
        .args([
            "create",
            "--label",
            "agent-fleet=1",
            "--label",
            &format!("fleet.host={prefix}"),
        ])
        .args([
            "--label",
            &format!("fleet.pid={dead_pid}"),
            "--label",
            &format!("fleet.job_id={job_id}"),
        ])
        .args([TEST_IMAGE, "sh"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(crate::util::container_ids(&job_id).len(), 2);

    assert_eq!(backend.cleanup_stale().await.unwrap(), 1);
    let left = crate::util::container_ids(&job_id);
    assert_eq!(left.len(), 1);
    assert!(
        !dead.starts_with(&left[0]),
        "the dead owner's container was removed"
    );
    live.exec("true", "/", SECOND * 10, 10)
        .await
        .expect("the live workspace is untouched");
    live.destroy().await.unwrap();
}
