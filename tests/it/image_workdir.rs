//! An image that ships files at the workdir (a repository at /testbed, as
//! SWE-bench-style images do): the job sees them, its input lands on top, the
//! patch counts them as the base, and files over the disk limit fail the job
//! clearly. Holds whichever way the engine bounds the disk (on drivers without
//! `storage-opt size` the workdir is a tmpfs volume that Docker leaves empty).

use std::process::Command;

use serde_json::{Value, json};

use crate::util::{Batch, TEST_IMAGE, containers_for};

/// Seed containers of the job (labelled `fleet.seed_of`, not `fleet.job_id`).
fn seeds_for(job_id: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=fleet.seed_of={job_id}"),
        ])
        .output()
        .expect("docker CLI");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().count()
}

const IMAGE: &str = "agent-fleet/workspace:image-workdir-test";

/// Builds [`IMAGE`] from the test image plus files at /testbed (a nested
/// directory, an executable) and a 20 MiB file at /big. Classic builder, nothing
/// pulled; layers are cached, so a rebuild is quick.
fn build_image() {
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path();
    let write = |rel: &str, body: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    write("testbed/README.md", b"from the image\n");
    write("testbed/src/lib/deep.txt", b"deep in the image\n");
    write("testbed/run.sh", b"#!/bin/sh\necho ran-from-image\n");
    write("big/blob", &vec![b'x'; 20 << 20]);
    write(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/testbed:/bin/sh\n",
    );
    write("etc/group", b"root:x:0:\napp:x:1001:\n");
    write(
        "Dockerfile",
        format!(
            "FROM {TEST_IMAGE}\nCOPY testbed/ /testbed/\nRUN chmod 755 /testbed/run.sh\nCOPY big/ /big/\nCOPY etc/ /etc/\nWORKDIR /testbed\n"
        )
        .as_bytes(),
    );
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(root)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn terminal_observations(events: &str) -> Vec<String> {
    events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "ObservationEvent" && e["tool_name"] == "terminal")
        .map(|e| e["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_image_files_at_the_workdir_are_the_base_and_the_input_lands_on_top() {
    build_image();
    let mut b = Batch::new();
    let input = b.input(&[
        ("README.md", "from the input\n"),
        ("input.txt", "input-file\n"),
    ]);
    let steps = json!({"steps": [
        {"tool": "terminal", "args": {"command": "ls -R; cat README.md src/lib/deep.txt input.txt; ./run.sh"}},
        {"tool": "terminal", "args": {"command": "echo edited >> src/lib/deep.txt"}},
        {"tool": "finish", "args": {"message": "done"}}
    ]});
    let plain = b.job(
        "seeded",
        json!({"task": "t", "image": IMAGE, "workdir": "/testbed", "input": {"path": input}}),
        steps.clone(),
    );
    // A read-only root: the workdir is then a volume on every storage driver.
    let read_only = b.job(
        "seeded-ro",
        json!({"task": "t", "image": IMAGE, "workdir": "/testbed", "input": {"path": input},
               "limits": {"read_only_root": true, "disk_mb": 64}}),
        steps,
    );
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in [&plain, &read_only] {
        let r = out.result(id);
        assert_eq!(r["outcome"], "succeeded", "{id}: {r}");
        let obs = terminal_observations(&b.store_text(id, "events.jsonl"));
        let seen = &obs[0];
        for want in [
            "run.sh",
            "./src/lib:",
            "deep.txt",
            "from the input",
            "deep in the image",
            "input-file",
            "ran-from-image",
        ] {
            assert!(seen.contains(want), "{id}: {want:?} not in {seen}");
        }
        assert!(
            !seen.contains("from the image"),
            "{id}: the input did not land on top: {seen}"
        );
        assert!(obs[1].contains("exit code 0"), "{id}: {}", obs[1]);
        let patch = b.store_text(id, "patch.diff");
        assert!(patch.contains("+++ b/src/lib/deep.txt"), "{id}: {patch}");
        assert!(
            patch.contains(" deep in the image\n+edited\n"),
            "{id}: {patch}"
        );
        for not in ["run.sh", "README.md", "input.txt"] {
            assert!(!patch.contains(not), "{id}: {not} in the patch: {patch}");
        }
        assert_eq!(containers_for(id), 0, "{id}: container left behind");
        assert_eq!(seeds_for(id), 0, "{id}: seed container left behind");
    }
}

#[test]
fn image_files_over_the_disk_limit_fail_the_job_naming_the_limit() {
    build_image();
    let mut b = Batch::new();
    let id = b.job(
        "seed-over",
        // A read-only root: its workdir is a tmpfs volume on every storage driver.
        json!({"task": "t", "image": IMAGE, "workdir": "/big",
               "limits": {"disk_mb": 16, "read_only_root": true}}),
        json!({"steps": [{"tool": "finish", "args": {"message": "never"}}]}),
    );
    let out = b.run();
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = out.result(&id);
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["error"]["kind"], "disk_limit", "{r}");
    assert_eq!(r["error"]["retryable"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("/big") && msg.contains("16 MiB"), "{msg}");
    assert_eq!(containers_for(&id), 0, "container left behind");
    assert_eq!(seeds_for(&id), 0, "seed container left behind");
}

/// A job with a non-root `limits.user`: its commands run as that uid, and the
/// workdir, the input and the image's files there are its own, so it can edit
/// them (by command and by the file editor) and create new ones; the patch shows
/// the edits. Docker's root exec gets no capabilities in such a container, so
/// none of this may rest on a `chown` inside it.
#[test]
fn a_job_user_owns_its_workdir_the_input_and_the_image_files() {
    build_image();
    let mut b = Batch::new();
    let input = b.input(&[("input.txt", "input-file\n"), ("sub/in.txt", "nested\n")]);
    let script = |dir: &str, image_file: Option<&str>| {
        let edit_image = image_file
            .map(|f| format!(" && echo edited >> {f}"))
            .unwrap_or_default();
        json!({"steps": [
            {"tool": "terminal", "args": {"command": "id -u; id -g"}},
            {"tool": "terminal", "args": {"command": format!(
                "echo edited >> input.txt && echo edited >> sub/in.txt{edit_image} && echo new > new.txt && mkdir -p made/deeper && echo x > made/deeper/f && echo edits-ok")}},
            {"tool": "file_editor", "args": {"command": "str_replace", "path": format!("{dir}/input.txt"), "old_str": "input-file", "new_str": "input-by-editor"}},
            {"tool": "file_editor", "args": {"command": "create", "path": format!("{dir}/by-editor/e.txt"), "file_text": "e\n"}},
            {"tool": "terminal", "args": {"command": "echo again >> input.txt && echo again >> by-editor/e.txt && stat -c '%u:%g %n' . * sub/* made/deeper/f by-editor/e.txt"}},
            {"tool": "finish", "args": {"message": "done"}}
        ]})
    };
    let plain = b.job(
        "user-plain",
        json!({"task": "t", "input": {"path": input}, "limits": {"user": "1000:1000"}}),
        script("/workspace", None),
    );
    let seeded = b.job(
        "user-seeded",
        json!({"task": "t", "image": IMAGE, "workdir": "/testbed", "input": {"path": input},
               "limits": {"user": "1000:1000", "disk_mb": 64}}),
        script("/testbed", Some("src/lib/deep.txt")),
    );
    let read_only = b.job(
        "user-seeded-ro",
        json!({"task": "t", "image": IMAGE, "workdir": "/testbed", "input": {"path": input},
               "limits": {"user": "1000:1000", "read_only_root": true, "disk_mb": 64}}),
        script("/testbed", Some("src/lib/deep.txt")),
    );
    // A uid alone: its group comes from the image's passwd (none here: group 0,
    // as Docker gives it), and the workdir is given to it at boot, not mounted so.
    let uid_only = b.job(
        "user-uid-only",
        json!({"task": "t", "input": {"path": input}, "limits": {"user": "1000"}}),
        script("/workspace", None),
    );
    // A name, looked up in the image's passwd; its tmpfs workdir is given to it
    // at boot (a directory entry uploaded to its parent).
    let named = b.job(
        "user-named",
        json!({"task": "t", "image": IMAGE, "workdir": "/testbed", "input": {"path": input},
               "limits": {"user": "app", "disk_mb": 64}}),
        script("/testbed", Some("src/lib/deep.txt")),
    );
    let out = b.run();
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in [&plain, &seeded, &read_only, &uid_only, &named] {
        let r = out.result(id);
        assert_eq!(r["outcome"], "succeeded", "{id}: {r}");
        let (ids, owner) = if id == &uid_only {
            ("1000\n0", "1000:0 ")
        } else if id == &named {
            ("1000\n1001", "1000:1001 ")
        } else {
            ("1000\n1000", "1000:1000 ")
        };
        let obs = terminal_observations(&b.store_text(id, "events.jsonl"));
        assert!(obs[0].contains(ids), "{id}: {}", obs[0]);
        assert!(obs[1].contains("edits-ok"), "{id}: {}", obs[1]);
        let stat = &obs[2];
        assert!(stat.contains("exit code 0"), "{id}: {stat}");
        let owned: Vec<&str> = stat.lines().filter(|l| l.contains(' ')).collect();
        for want in [
            " .",
            " input.txt",
            " sub/in.txt",
            " new.txt",
            " by-editor/e.txt",
        ] {
            assert!(
                owned
                    .iter()
                    .any(|l| l.starts_with(owner) && l.ends_with(want)),
                "{id}: {want} not owned by {owner}in {stat}"
            );
        }
        assert!(
            owned
                .iter()
                .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                .all(|l| l.starts_with(owner)),
            "{id}: something is not {owner}: {stat}"
        );
        let patch = b.store_text(id, "patch.diff");
        for want in [
            "-input-file\n+input-by-editor\n+edited\n+again\n",
            " nested\n+edited\n",
            "+++ b/new.txt",
            "+++ b/by-editor/e.txt",
        ] {
            assert!(patch.contains(want), "{id}: {want:?} not in {patch}");
        }
        if id == &seeded || id == &read_only || id == &named {
            assert!(stat.contains(" README.md"), "{id}: {stat}");
            assert!(
                patch.contains(" deep in the image\n+edited\n"),
                "{id}: {patch}"
            );
        }
        assert_eq!(containers_for(id), 0, "{id}: container left behind");
        assert_eq!(seeds_for(id), 0, "{id}: seed container left behind");
    }
}
