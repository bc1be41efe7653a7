//! Container hardening against a real worker and Docker: what `docker inspect`
//! shows of a job's container, and what the job's own commands can and cannot do.

use std::process::Command;
use std::time::{Duration, Instant};

use agent_fleet::job::State;
use serde_json::{Value, json};

use super::harness::{Fleet, WAIT, poll};
use crate::util::containers_for;

/// Whatever the job says, its container gets no host mount, no device and no
/// Docker socket; a job can ask for a non-root user, a read-only root filesystem
/// (workdir and /tmp writable) and a disk limit, and Docker shows each.
#[test]
fn containers_get_no_host_mount_device_or_socket_and_hardening_holds() {
    let f = Fleet::new();
    // Fields that would name a mount, a device or privileges are not in the job
    // file format: refused as invalid before anything runs.
    for extra in [
        json!({"mounts": ["/var/run/docker.sock:/var/run/docker.sock"]}),
        json!({"limits": {"devices": ["/dev/sda"]}}),
        json!({"limits": {"privileged": true}}),
        json!({"volumes": {"/": "/host"}}),
    ] {
        let file = f.dir.path().join("bad.json");
        let mut job = json!({"id": "bad", "task": "t"});
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        std::fs::write(&file, Value::Array(vec![job]).to_string()).unwrap();
        let out = f.cli(&["submit", file.to_str().unwrap()], Duration::from_secs(60));
        assert_eq!(out.code, Some(2), "{extra}: {}", out.stderr);
        assert!(
            out.stderr.contains("unknown field"),
            "{extra}: {}",
            out.stderr
        );
    }
    let commands = [
        "id -u; id -g",
        "touch /etc/fleet-probe 2>&1 || echo root-is-read-only",
        "touch /tmp/probe && echo tmp-writable; touch probe && echo workdir-writable",
        "ls /var/run/docker.sock /run/docker.sock 2>&1 || echo no-docker-socket",
        "dd if=/dev/zero of=big bs=1M count=80 2>&1; rm -f big",
        "sleep 3; echo done",
    ];
    let mut steps: Vec<Value> = commands
        .iter()
        .map(|c| json!({"tool": "terminal", "args": {"command": c}}))
        .collect();
    steps.push(json!({"tool": "finish", "args": {"message": "probed"}}));
    let id = f.add_job(
        "hardened",
        json!({"task": "probe", "limits": {"user": "1000:1000", "read_only_root": true, "disk_mb": 32}}),
        json!({"steps": steps}),
    );
    f.worker(1, &[]);
    f.submit();
    let inspect = poll(
        WAIT,
        "the job's container",
        || {
            let out = Command::new("docker")
                .args(["ps", "-q", "--filter", &format!("label=fleet.job_id={id}")])
                .output()
                .ok()?;
            let cid = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .to_string();
            let out = Command::new("docker")
                .args(["inspect", &cid])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        },
        || f.diagnostics(),
    );
    let v: Value = serde_json::from_str(&inspect).unwrap();
    let c = &v[0];
    let hc = &c["HostConfig"];
    assert_eq!(hc["Privileged"], json!(false));
    assert_eq!(hc["Init"], json!(true));
    assert_eq!(hc["ReadonlyRootfs"], json!(true));
    assert!(
        hc["Binds"].is_null() || hc["Binds"] == json!([]),
        "{}",
        hc["Binds"]
    );
    assert!(
        hc["Devices"].is_null() || hc["Devices"] == json!([]),
        "{}",
        hc["Devices"]
    );
    assert!(hc["SecurityOpt"].to_string().contains("no-new-privileges"));
    assert_eq!(hc["NetworkMode"], json!("none"));
    // What the job prints goes to no log file on the host.
    assert_eq!(
        hc["LogConfig"]["Type"],
        json!("none"),
        "{}",
        hc["LogConfig"]
    );
    assert_eq!(c["LogPath"], json!(""), "{}", c["LogPath"]);
    assert_eq!(c["Config"]["User"], json!("1000:1000"));
    for m in c["Mounts"].as_array().unwrap() {
        assert_eq!(
            m["Type"],
            json!("volume"),
            "a mount that is not a volume: {m}"
        );
        assert!(!m.to_string().contains("docker.sock"), "{m}");
    }
    assert!(!inspect.contains("docker.sock"));
    let s = f.wait_terminal(std::slice::from_ref(&id), WAIT);
    assert_eq!(s[0].state, State::Succeeded, "{:?}", s[0]);
    let events = String::from_utf8(f.file(&id, "events.jsonl").unwrap()).unwrap();
    let observations: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "ObservationEvent" && e["tool_name"] == "terminal")
        .map(|e| e["content"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(observations.len(), commands.len(), "{events}");
    assert!(
        observations[0].contains("1000\n1000"),
        "{}",
        observations[0]
    );
    assert!(
        observations[1].contains("root-is-read-only"),
        "{}",
        observations[1]
    );
    assert!(
        observations[2].contains("tmp-writable") && observations[2].contains("workdir-writable"),
        "{}",
        observations[2]
    );
    assert!(
        observations[3].contains("no-docker-socket"),
        "{}",
        observations[3]
    );
    assert!(
        observations[4].contains("No space left"),
        "the disk limit did not hold: {}",
        observations[4]
    );
    let t = Instant::now();
    while containers_for(&id) > 0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(containers_for(&id), 0);
}
