//! The workspace backends against the real thing: a Docker engine with the
//! busybox-only test image (scripts/build-images.sh), and the host for `local`.
//! The same core checks run on both backends; Docker-only ones (limits, labels,
//! stale cleanup, missing image) follow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_fleet::workspace::docker::DockerBackend;
use agent_fleet::workspace::local::LocalBackend;
use agent_fleet::workspace::{Backend, PathKind, Workspace, WorkspaceError, WorkspaceSpec};

use crate::util::TEST_IMAGE;

const SECOND: Duration = Duration::from_secs(1);

/// A job id unique to this run: tests run in parallel, in separate processes.
fn unique_id(name: &str) -> String {
    format!(
        "t-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn spec(job_id: &str) -> WorkspaceSpec {
    WorkspaceSpec {
        job_id: job_id.to_string(),
        attempt: 1,
        worker_id: "it-worker".into(),
        image: TEST_IMAGE.into(),
        workdir: "/workspace".into(),
        env: BTreeMap::from([("GREETING".to_string(), "hello there".to_string())]),
        memory_mb: 256,
        cpus: 1.0,
        pids: 128,
        network: "none".into(),
    }
}

/// Removes the job's containers however the test ends (also on a failed assert).
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &id])
                .output();
        }
    }
}

/// Ids of all containers (running or not) labelled with this job id.
fn containers_of(job_id: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=fleet.job_id={job_id}"),
        ])
        .output()
        .expect("docker CLI runs");
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
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

async fn local(name: &str) -> (Workspace, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let backend = Backend::Local(LocalBackend::new(root.path().to_path_buf()));
    let ws = backend
        .start(&spec(&unique_id(name)))
        .await
        .expect("local workspace starts");
    (ws, root)
}

async fn run(ws: &Workspace, script: &str) -> agent_fleet::workspace::ExecOutput {
    ws.exec(script, ws.workdir(), 30 * SECOND, 10_000)
        .await
        .expect("exec")
}

// ---- the checks both backends must pass ----

async fn check_exec(ws: &Workspace) {
    let out = run(ws, "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out);
    assert!(
        out.output.contains("out\n") && out.output.contains("err\n"),
        "{out:?}"
    );
    assert_eq!(out.total_bytes, 8);

    let out = run(ws, "pwd").await;
    assert_eq!(out.output.trim(), ws.workdir());
    assert_eq!(out.exit_code, Some(0));
    let out = ws.exec("pwd", "/", 10 * SECOND, 1000).await.unwrap();
    assert_eq!(out.output, "/\n");

    let out = run(ws, r#"printf '%s' "$GREETING""#).await;
    assert_eq!(out.output, "hello there");

    // A missing cwd fails the command like a terminal would, not the call.
    let out = ws
        .exec("echo never", "/no/such/dir", 10 * SECOND, 1000)
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert!(!out.output.contains("never"), "{out:?}");

    assert!(matches!(
        ws.exec("true", "relative", SECOND, 10).await,
        Err(WorkspaceError::Path { .. })
    ));
}

async fn check_timeout(ws: &Workspace) {
    // Started by an earlier command: must survive the kill of a later one.
    let out = run(ws, "sleep 300 >/dev/null 2>&1 & echo started").await;
    assert_eq!(out.exit_code, Some(0));

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
    assert!(
        started.elapsed() < 15 * SECOND,
        "took {:?}",
        started.elapsed()
    );
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.output, "before\n");

    // The command's processes are gone (children included), the earlier one is not.
    let ps = run(ws, "ps -o args 2>/dev/null || ps -eo args")
        .await
        .output;
    assert!(
        !ps.contains("sleep 100") && !ps.contains("sleep 101"),
        "{ps}"
    );
    assert!(ps.contains("sleep 300"), "{ps}");

    let out = run(ws, "echo still usable").await;
    assert_eq!(
        (out.output.as_str(), out.exit_code),
        ("still usable\n", Some(0))
    );
}

async fn check_flood(ws: &Workspace) {
    let started = Instant::now();
    let out = ws
        .exec(
            "yes | head -c 200000000; echo done >&2",
            ws.workdir(),
            120 * SECOND,
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0), "{}", out.output);
    assert!(!out.timed_out);
    assert_eq!(out.total_bytes, 200_000_005);
    assert!(out.output.len() < 11_000, "kept {} bytes", out.output.len());
    assert!(
        out.output.starts_with("y\ny\n") && out.output.ends_with("y\ndone\n"),
        "{}",
        &out.output[..100]
    );
    assert!(out.output.contains("response clipped"));
    eprintln!("200 MB of output read in {:?}", started.elapsed());
}

async fn check_files(ws: &Workspace) {
    let dir = ws.workdir().to_string();
    let f = format!("{dir}/new/nested/dir/f.txt");
    assert_eq!(ws.read_file(&f).await.unwrap(), None);
    assert_eq!(ws.stat(&f).await.unwrap(), None);

    ws.write_file(&f, b"first\n").await.unwrap();
    assert_eq!(
        ws.read_file(&f).await.unwrap().as_deref(),
        Some(&b"first\n"[..])
    );
    assert_eq!(ws.stat(&f).await.unwrap(), Some(PathKind::File { size: 6 }));
    assert_eq!(
        ws.stat(&format!("{dir}/new/nested")).await.unwrap(),
        Some(PathKind::Dir)
    );
    // Visible to commands, and the other way round.
    assert_eq!(run(ws, "cat new/nested/dir/f.txt").await.output, "first\n");
    run(ws, "printf 'from sh' > made.txt && ln -s made.txt link.txt").await;
    assert_eq!(
        ws.read_file(&format!("{dir}/made.txt"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"from sh"[..])
    );
    assert_eq!(
        ws.read_file(&format!("{dir}/link.txt"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"from sh"[..])
    );

    // Overwriting keeps the mode (an edited script stays executable).
    run(
        ws,
        "printf '#!/bin/sh\\necho v1\\n' > run.sh && chmod 755 run.sh",
    )
    .await;
    ws.write_file(&format!("{dir}/run.sh"), b"#!/bin/sh\necho v2\n")
        .await
        .unwrap();
    let out = run(ws, "./run.sh").await;
    assert_eq!((out.output.as_str(), out.exit_code), ("v2\n", Some(0)));

    // Empty and binary content round-trip.
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.write_file(&format!("{dir}/bin.dat"), &bin)
        .await
        .unwrap();
    assert_eq!(
        ws.read_file(&format!("{dir}/bin.dat")).await.unwrap(),
        Some(bin)
    );
    ws.write_file(&format!("{dir}/empty"), b"").await.unwrap();
    assert_eq!(
        ws.read_file(&format!("{dir}/empty")).await.unwrap(),
        Some(Vec::new())
    );

    assert!(matches!(
        ws.read_file(&format!("{dir}/new")).await,
        Err(WorkspaceError::Path { .. })
    ));
    assert!(matches!(
        ws.write_file(&format!("{dir}/new"), b"x").await,
        Err(WorkspaceError::Path { .. })
    ));
    assert!(matches!(
        ws.write_file(&format!("{f}/under-a-file"), b"x").await,
        Err(WorkspaceError::Path { .. })
    ));
    assert!(matches!(
        ws.read_file("relative.txt").await,
        Err(WorkspaceError::Path { .. })
    ));
    // The directory survived the refused write.
    assert_eq!(
        ws.stat(&format!("{dir}/new")).await.unwrap(),
        Some(PathKind::Dir)
    );
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("README.md", b"# demo\n");
    add("src/main.c", b"int main(void) { return 0; }\n");
    add("data/big.bin", &[7u8; 5000]);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "empty/", std::io::empty()).unwrap();
    b.into_inner().unwrap()
}

async fn check_tar_and_snapshot(ws: &Workspace) {
    let dest = format!("{}/project/input", ws.workdir());
    ws.put_tar(&dest, sample_tar()).await.unwrap();
    assert_eq!(
        run(ws, "cat project/input/src/main.c").await.output,
        "int main(void) { return 0; }\n"
    );

    let snap = ws.snapshot(&dest, 1000, 1_000_000).await.unwrap();
    assert!(!snap.truncated);
    assert_eq!(snap.files["README.md"].as_deref(), Some(&b"# demo\n"[..]));
    assert_eq!(
        snap.files["data/big.bin"], None,
        "over the per-file limit: listed without content"
    );
    assert_eq!(snap.files.len(), 3, "{:?}", snap.files.keys());
    for d in ["data", "empty", "src"] {
        assert!(snap.dirs.contains(&d.to_string()), "{:?}", snap.dirs);
    }

    let small = ws.snapshot(&dest, 1000, 10).await.unwrap();
    assert!(small.truncated);
    assert!(
        small
            .files
            .values()
            .flatten()
            .map(|c| c.len())
            .sum::<usize>()
            <= 10
    );

    let none = ws
        .snapshot(&format!("{}/missing", ws.workdir()), 1000, 1000)
        .await
        .unwrap();
    assert!(none.files.is_empty() && none.dirs.is_empty());
    let file = format!("{dest}/README.md");
    assert!(matches!(
        ws.snapshot(&file, 1000, 1000).await,
        Err(WorkspaceError::Path { .. })
    ));
}

// ---- Docker ----

#[tokio::test]
async fn docker_exec_env_and_cwd() {
    let (_b, ws, _g, _) = docker("exec").await;
    check_exec(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_timeout_kills_the_command_tree() {
    let (_b, ws, _g, _) = docker("timeout").await;
    check_timeout(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_output_flood_stays_bounded() {
    let (_b, ws, _g, _) = docker("flood").await;
    check_flood(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_files_through_the_archive_api() {
    let (_b, ws, _g, _) = docker("files").await;
    check_files(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_put_tar_and_snapshot() {
    let (_b, ws, _g, _) = docker("snapshot").await;
    check_tar_and_snapshot(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_destroy_leaves_no_container() {
    let (backend, ws, _g, job_id) = docker("destroy").await;
    assert_eq!(containers_of(&job_id).len(), 1);
    assert!(backend.ping().await);
    ws.destroy().await.unwrap();
    assert!(containers_of(&job_id).is_empty());
}

#[tokio::test]
async fn docker_limits_and_labels_are_applied() {
    let (_b, ws, _g, job_id) = docker("limits").await;
    let ids = containers_of(&job_id);
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
    // The limits bite: the pids limit stops a fork bomb-ish loop, the workspace survives it.
    let out = ws
        .exec(
            "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done 2>&1; wait",
            "/",
            10 * SECOND,
            2000,
        )
        .await
        .unwrap();
    assert!(
        out.timed_out || out.output.contains("fork") || out.output.contains("resource"),
        "{out:?}"
    );
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn docker_unknown_image_is_not_retryable() {
    let job_id = unique_id("noimage");
    let _g = Containers(job_id.clone());
    let backend = Backend::Docker(
        DockerBackend::connect("host-noimage")
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
    assert!(containers_of(&job_id).is_empty());
}

#[tokio::test]
async fn docker_workdir_is_created_and_a_file_in_its_place_fails_start() {
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
        containers_of(&job_id).is_empty(),
        "a failed start leaves nothing behind"
    );
}

#[tokio::test]
async fn docker_cleanup_stale_removes_only_dead_owners() {
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
    assert_eq!(containers_of(&job_id).len(), 2);

    assert_eq!(backend.cleanup_stale().await.unwrap(), 1);
    let left = containers_of(&job_id);
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

// ---- local ----

#[tokio::test]
async fn local_exec_env_and_cwd() {
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
async fn local_timeout_kills_the_command_tree() {
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
async fn local_background_processes_do_not_hold_the_result() {
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
async fn local_output_flood_stays_bounded() {
    let (ws, _root) = local("flood").await;
    check_flood(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_files() {
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
async fn local_put_tar_and_snapshot() {
    let (ws, _root) = local("snapshot").await;
    check_tar_and_snapshot(&ws).await;
    ws.destroy().await.unwrap();
}

#[tokio::test]
async fn local_destroy_removes_the_directory() {
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
