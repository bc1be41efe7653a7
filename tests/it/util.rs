//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The workspace image the tests use (built by scripts/build-images.sh).
pub const TEST_IMAGE: &str = "agent-fleet/workspace:test";

/// The `fleet` binary under test.
pub fn fleet() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fleet"))
}

/// Ids of the containers (any state) labelled with this job id; `None` when
/// the docker CLI fails (for teardown, which must not panic).
pub fn try_container_ids(job_id: &str) -> Option<Vec<String>> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=fleet.job_id={job_id}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// Ids of the containers (any state) labelled with this job id.
pub fn container_ids(job_id: &str) -> Vec<String> {
    try_container_ids(job_id).expect("`docker ps` of a job's containers")
}

/// Containers (any state) labelled with this job id.
pub fn containers_for(job_id: &str) -> usize {
    container_ids(job_id).len()
}

/// A job file plus the scripts of the scripted LLM, in a temporary directory.
pub struct Batch {
    pub dir: tempfile::TempDir,
    jobs: Vec<Value>,
    env: Vec<(String, String)>,
    inputs: usize,
    /// Send SIGINT to `fleet run` this long after it starts.
    pub interrupt_after: Option<std::time::Duration>,
    /// Signals to send to `fleet run`, each this long after it starts.
    pub signals: Vec<(std::time::Duration, libc::c_int)>,
}

/// What `fleet run` did.
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub results: Vec<Value>,
    pub peak_rss_mb: f64,
}

impl RunOutput {
    pub fn result(&self, id: &str) -> Value {
        self.results
            .iter()
            .find(|r| r["job_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {id}; stderr: {}", self.stderr))
    }
}

impl Batch {
    pub fn new() -> Batch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        Batch {
            dir,
            jobs: Vec::new(),
            env: Vec::new(),
            inputs: 0,
            interrupt_after: None,
            signals: Vec::new(),
        }
    }

    /// Adds a job with its own script; returns its unique id.
    pub fn job(&mut self, name: &str, mut job: Value, script: Value) -> String {
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        std::fs::write(
            self.dir.path().join(format!("scripts/{id}.json")),
            script.to_string(),
        )
        .unwrap();
        let obj = job.as_object_mut().expect("job object");
        obj.insert("id".into(), id.clone().into());
        obj.entry("image").or_insert(TEST_IMAGE.into());
        let llm = obj.entry("llm").or_insert(serde_json::json!({}));
        llm.as_object_mut()
            .unwrap()
            .insert("model".into(), id.clone().into());
        self.jobs.push(job);
        id
    }

    /// Writes an input directory with these files; returns its path.
    pub fn input(&mut self, files: &[(&str, &str)]) -> String {
        self.inputs += 1;
        let root = self.dir.path().join(format!("input{}", self.inputs));
        for (name, body) in files {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        root.display().to_string()
    }

    pub fn env(&mut self, k: &str, v: &str) {
        self.env.push((k.into(), v.into()));
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn store_file(&self, id: &str, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.store().join("jobs").join(id).join(name)).ok()
    }

    pub fn store_text(&self, id: &str, name: &str) -> String {
        String::from_utf8(
            self.store_file(id, name)
                .unwrap_or_else(|| panic!("{name} of {id} missing")),
        )
        .unwrap()
    }

    pub fn all_store_files(&self) -> Vec<(String, String)> {
        fn walk(p: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let body = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
                    out.push((path.display().to_string(), body));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.store(), &mut out);
        out
    }

    pub fn run(&self) -> RunOutput {
        self.run_with(&[])
    }

    /// Runs `fleet run --json` over the batch, sampling the process's peak RSS.
    pub fn run_with(&self, extra: &[&str]) -> RunOutput {
        let jobs = self.dir.path().join("jobs.json");
        std::fs::write(&jobs, Value::Array(self.jobs.clone()).to_string()).unwrap();
        let mut cmd = Command::new(fleet());
        cmd.args(["run", jobs.to_str().unwrap(), "--json", "--quiet"])
            .arg("--store")
            .arg(self.store())
            .arg("--mock-llm")
            .arg(self.dir.path().join("scripts"))
            .args(extra)
            .env("FLEET_LLM_RETRY_MIN_SECS", "0.05")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fleet");
        let pid = child.id();
        if let Some(after) = self.interrupt_after {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
            });
        }
        for &(after, sig) in &self.signals {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid as i32, sig) };
            });
        }
        let out = child.wait_with_output_and_peak(pid);
        let stdout = String::from_utf8_lossy(&out.0.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.0.stderr).to_string();
        let results = serde_json::from_str::<Vec<Value>>(&stdout).unwrap_or_default();
        RunOutput {
            code: out.0.status.code().unwrap_or(-1),
            stdout,
            stderr,
            results,
            peak_rss_mb: out.1,
        }
    }
}

trait WaitPeak {
    fn wait_with_output_and_peak(self, pid: u32) -> (std::process::Output, f64);
}

impl WaitPeak for std::process::Child {
    /// Waits for the child; VmHWM (its peak RSS) is read just before it exits by
    /// polling, the last value seen is the peak.
    fn wait_with_output_and_peak(self, pid: u32) -> (std::process::Output, f64) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = std::sync::Arc::new(std::sync::Mutex::new(0f64));
        let (s, p) = (stop.clone(), peak.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kb) = vm_hwm_kb(pid) {
                    let mut p = p.lock().unwrap();
                    *p = p.max(kb as f64 / 1024.0);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let out = self.wait_with_output().expect("wait fleet");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap();
        let peak = *peak.lock().unwrap();
        (out, peak)
    }
}

/// Peak resident set size of a process, in kB.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
