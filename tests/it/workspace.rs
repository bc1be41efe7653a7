//! The workspace backends against the real thing: a Docker engine with the
//! busybox-only test image (scripts/build-images.sh), and the host for `local`.
//! The same core checks run on both backends; Docker-only ones (limits, labels,
//! stale cleanup, missing image) follow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agent_fleet::workspace::{PathKind, Workspace, WorkspaceError, WorkspaceSpec};

use crate::util::TEST_IMAGE;

mod docker;
mod local;

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
        user: None,
        read_only_root: false,
        disk_mb: None,
    }
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
            "yes | head -c 200000000; echo done",
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
    // Nothing close to the 200 MB was held: the peak RSS of this test process
    // (nextest runs each test in its own) stays small.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kb < 100 * 1024, "peak RSS {peak_kb} kB");
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
