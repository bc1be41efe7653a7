//! A small fleet per test: its own queue names (`FLEET_QUEUE_PREFIX=it-<id>.`), its
//! own store (`s3://fleet-test/it-<id>`), a scripted LLM, and `fleet worker` /
//! `fleet submit` as child processes of the real binary. Everything it starts is
//! killed when it is dropped, on every path (a failed assertion included), and the
//! containers of its jobs are removed.
//!
//! Services: RabbitMQ (`FLEET_TEST_AMQP`, default amqp://guest:guest@127.0.0.1:5672/%2f),
//! the S3 API (`FLEET_TEST_S3_ENDPOINT`, default http://127.0.0.1:9000, bucket
//! fleet-test, credentials test/test) and Docker with the test image. A missing one
//! fails the test.
//!
//! `broker.rs` holds the fleet's broker side (raw publishes, dead letters, queue
//! depths, cutting a consumer); `support.rs` what tests use beside a `Fleet`
//! (a webhook receiver, status-history counts, job builders, Docker CLI views).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_fleet::job::{JobResult, State, StatusRecord};
use agent_fleet::queue::Queue;
use agent_fleet::store::s3::{S3Settings, S3Store};
use agent_fleet::store::{JobKeys, Store};
use aws_sdk_s3::config::Credentials;
use serde_json::{Value, json};

use crate::util::{TEST_IMAGE, containers_for, fleet};

mod broker;
mod support;

use broker::producer_options;
pub use support::{HookReceiver, few_steps, runs, slow, states, terminal_transitions};
use support::{check_docker, docker_ps, remove_containers};

pub const BUCKET: &str = "fleet-test";
/// Generous bound for anything a test waits for (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(120);
/// Heartbeat lease of the workers: a killed worker's job is taken over this soon.
pub const LEASE_SECS: &str = "3";
pub const RETRY_TIERS_SECS: &str = "1,3,10";

pub fn amqp_url() -> String {
    std::env::var("FLEET_TEST_AMQP")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn s3_endpoint() -> String {
    std::env::var("FLEET_TEST_S3_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:9000".into())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Polls `f` until it gives a value or `within` passes; then panics with `what`
/// and the diagnostics `why` returns.
pub fn poll<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    why: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}\n{}", why());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A process this harness started.
struct Proc {
    name: String,
    child: Child,
    /// stdout and stderr, for diagnostics.
    logs: Vec<PathBuf>,
    exit: Option<ExitStatus>,
}

impl Proc {
    fn alive(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit.is_none()
    }
}

/// A `fleet worker` of this fleet.
#[derive(Debug, Clone)]
pub struct WorkerRef {
    pub index: usize,
    pub name: String,
    pub pid: u32,
    /// Its worker id (`<host>-<pid>-<hex>`), as status records name it.
    pub id: String,
}

/// What `fleet submit` printed with `--json`.
#[derive(Debug)]
pub struct Submitted {
    pub batch_id: String,
    pub job_ids: Vec<String>,
}

/// A finished CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    /// `it-<id>.`: every queue and exchange name of this fleet starts with it.
    pub prefix: String,
    /// `s3://fleet-test/it-<id>`.
    pub store_spec: String,
    pub endpoint: String,
    pub llm_url: String,
    pub rt: tokio::runtime::Runtime,
    /// The test's own view of the store.
    pub store: Store,
    /// A producer handle on this fleet's topology (declared by it), for raw
    /// publishes, queue stats and teardown.
    pub queue: Queue,
    procs: Mutex<Vec<Proc>>,
    pending: Mutex<Vec<Value>>,
    /// Every job id this fleet made, for the container sweep at the end.
    job_ids: Mutex<Vec<String>>,
    /// Extra environment for every child.
    extra_env: Vec<(String, String)>,
}

impl Fleet {
    /// A fleet on the shared test S3 endpoint.
    pub fn new() -> Fleet {
        Fleet::with_endpoint(&s3_endpoint())
    }

    /// A fleet whose store is a local directory (shared by its workers, which
    /// lock it with flock), with the same broker and scripted LLM.
    pub fn with_local_store() -> Fleet {
        let mut f = Fleet::with_endpoint(&s3_endpoint());
        let dir = f.dir.path().join("store");
        f.store_spec = dir.display().to_string();
        f.store =
            f.rt.block_on(Store::open(&f.store_spec))
                .expect("a local store");
        f
    }

    /// Extra environment for every child started from now on.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.push((name.to_string(), value.to_string()));
    }

    /// The scripted LLM's own request log for one model (= one job of this
    /// harness): the step of each request, in order. An observer the workers do
    /// not write.
    pub fn llm_requests(&self, model: &str) -> Vec<u64> {
        let text =
            std::fs::read_to_string(self.dir.path().join("llm-requests.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["model"] == model)
            .filter_map(|v| v["step"].as_u64())
            .collect()
    }

    /// Runs of a job as the scripted LLM saw them: requests for its first step.
    pub fn llm_runs(&self, model: &str) -> usize {
        self.llm_requests(model).iter().filter(|s| **s == 0).count()
    }

    /// A fleet whose store is on `endpoint` (an S3 API with the bucket fleet-test).
    pub fn with_endpoint(endpoint: &str) -> Fleet {
        check_docker();
        let id = short_id();
        let prefix = format!("it-{id}.");
        let store_prefix = format!("it-{id}");
        let store_spec = format!("s3://{BUCKET}/{store_prefix}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let store = rt.block_on(async {
            let mut s = S3Settings::new(BUCKET, &store_prefix);
            s.endpoint = Some(endpoint.to_string());
            s.region = "us-east-1".into();
            s.credentials = Some(Credentials::new("test", "test", None, None, "fleet-it"));
            s.validate_download_checksums = false;
            s.retry_budget = Duration::from_secs(60);
            let s3 = S3Store::connect(s).await.expect("S3 client");
            if let Err(e) = s3.ping().await {
                panic!(
                    "the S3 test server does not answer at {endpoint} ({e}); \
                     run `eval \"$(bash scripts/services/s3.sh up)\"`"
                );
            }
            Store::S3(s3)
        });
        let queue = rt.block_on(async {
            Queue::open(&amqp_url(), producer_options(&prefix))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "RabbitMQ at {} ({e}); run `bash scripts/services/rabbitmq.sh`",
                        amqp_url()
                    )
                })
        });
        let dir = tempfile::Builder::new()
            .prefix("fleet-it-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        let mut f = Fleet {
            dir,
            prefix,
            store_spec,
            endpoint: endpoint.to_string(),
            llm_url: String::new(),
            rt,
            store,
            queue,
            procs: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            job_ids: Mutex::new(Vec::new()),
            extra_env: Vec::new(),
        };
        f.llm_url = f.start_mock_llm();
        f
    }

    pub fn scripts_dir(&self) -> PathBuf {
        self.dir.path().join("scripts")
    }

    /// The environment every `fleet` child gets (also for a worker run elsewhere,
    /// e.g. in a container).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("FLEET_QUEUE", amqp_url()),
            ("FLEET_STORE", self.store_spec.clone()),
            ("FLEET_QUEUE_PREFIX", self.prefix.clone()),
            ("FLEET_S3_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("FLEET_LEASE_SECS", LEASE_SECS.into()),
            ("FLEET_RETRY_TIERS_SECS", RETRY_TIERS_SECS.into()),
            ("FLEET_LLM_RETRY_MIN_SECS", "0.05".into()),
            ("FLEET_DEFAULT_IMAGE", TEST_IMAGE.into()),
            ("LLM_BASE_URL", self.llm_url.clone()),
            ("NO_COLOR", "1".into()),
            (
                "RUST_LOG",
                "warn,agent_fleet=info,fleet=info,lapin=warn".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        v.extend(self.extra_env.iter().cloned());
        v
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(fleet());
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for k in [
            "FLEET_CONCURRENCY",
            "FLEET_METRICS_ADDR",
            "FLEET_WEBHOOK_URL",
            "FLEET_WEBHOOK_SECRET",
            "FLEET_WEBHOOK_STARTED",
            "FLEET_MAX_ATTEMPTS",
            "LLM_MODEL",
            "LLM_API_KEY",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "FLEET_LOG_FORMAT",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        cmd
    }

    fn log_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{name}.stdout")),
            self.dir.path().join(format!("{name}.stderr")),
        )
    }

    fn start_mock_llm(&self) -> String {
        let (_, err) = self.log_files("mock-llm");
        let mut child = Command::new(fleet())
            .args(["mock-llm", "--addr", "127.0.0.1:0", "--scripts"])
            .arg(self.scripts_dir())
            .arg("--request-log")
            .arg(self.dir.path().join("llm-requests.jsonl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn fleet mock-llm");
        let stdout = child.stdout.take().unwrap();
        self.procs.lock().unwrap().push(Proc {
            name: "mock-llm".into(),
            child,
            logs: vec![err.clone()],
            exit: None,
        });
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line.trim().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "fleet mock-llm printed {url:?}; stderr: {}",
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        url
    }

    /// Starts `fleet worker --concurrency n` plus `extra` flags; waits until it
    /// is up (connected to the broker and the store, metrics served).
    pub fn worker(&self, n: usize, extra: &[&str]) -> WorkerRef {
        let index = self.procs.lock().unwrap().len();
        let name = format!("worker{index}");
        let (out, err) = self.log_files(&name);
        let mut args = vec![
            "worker".to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
            "--concurrency".into(),
            n.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .command(&args)
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn fleet worker");
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc {
            name: name.clone(),
            child,
            logs: vec![out, err.clone()],
            exit: None,
        });
        // "fleet worker <id>: N slots, metrics on http://…"
        let id = poll(
            Duration::from_secs(60),
            &format!("{name} to start"),
            || {
                let text = std::fs::read_to_string(&err).unwrap_or_default();
                if let Some(id) = text.lines().find_map(|l| {
                    let rest = l.strip_prefix("fleet worker ")?;
                    let (id, tail) = rest.split_once(": ")?;
                    tail.contains(" slots").then(|| id.to_string())
                }) {
                    return Some(id);
                }
                let mut procs = self.procs.lock().unwrap();
                let p = procs.iter_mut().find(|p| p.name == name).unwrap();
                assert!(
                    p.alive(),
                    "{name} exited during start-up ({:?}):\n{text}",
                    p.exit
                );
                None
            },
            || self.diagnostics(),
        );
        WorkerRef {
            index,
            name,
            pid,
            id,
        }
    }

    pub fn alive(&self, w: &WorkerRef) -> bool {
        let mut procs = self.procs.lock().unwrap();
        procs.iter_mut().find(|p| p.name == w.name).unwrap().alive()
    }

    /// Sends a signal to a worker (by its pid, while it is not reaped).
    pub fn signal(&self, w: &WorkerRef, sig: libc::c_int) {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.iter_mut().find(|p| p.name == w.name).unwrap();
        assert!(p.alive(), "{} already exited: {:?}", w.name, p.exit);
        // SAFETY: kill(2) on a child we have not reaped: the pid is still ours.
        let rc = unsafe { libc::kill(p.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill {} {sig}", w.name);
    }

    /// SIGKILL, then reap.
    pub fn kill(&self, w: &WorkerRef) {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.iter_mut().find(|p| p.name == w.name).unwrap();
        if p.alive() {
            let _ = p.child.kill();
            p.exit = Some(p.child.wait().expect("wait"));
        }
    }

    /// Waits for a worker to exit by itself.
    pub fn wait_exit(&self, w: &WorkerRef, within: Duration) -> ExitStatus {
        poll(
            within,
            &format!("{} to exit", w.name),
            || {
                let mut procs = self.procs.lock().unwrap();
                let p = procs.iter_mut().find(|p| p.name == w.name).unwrap();
                if p.alive() { None } else { p.exit }
            },
            || self.diagnostics(),
        )
    }

    pub fn worker_log(&self, w: &WorkerRef) -> String {
        std::fs::read_to_string(self.log_files(&w.name).1).unwrap_or_default()
    }

    /// The tail of every child's output, and the state of this fleet's jobs.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Ok(procs) = self.procs.try_lock() {
            for p in procs.iter() {
                for l in &p.logs {
                    let text = std::fs::read_to_string(l).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(40)..];
                    out.push_str(&format!(
                        "--- {} ({}) exit {:?}\n{}\n",
                        p.name,
                        l.file_name().unwrap().to_string_lossy(),
                        p.exit,
                        tail.join("\n")
                    ));
                }
            }
        }
        let ids = self.job_ids.lock().map(|v| v.clone()).unwrap_or_default();
        let states = self.rt.block_on(async {
            let mut v = Vec::new();
            for id in ids.iter().take(40) {
                let s = tokio::time::timeout(Duration::from_secs(5), self.store.status(id)).await;
                v.push(match s {
                    Ok(Ok(Some(s))) => format!(
                        "{id}: {} attempt {} history {:?}",
                        s.state,
                        s.attempt,
                        s.history
                            .iter()
                            .map(|t| format!("{}@{}", t.state, t.attempt))
                            .collect::<Vec<_>>()
                    ),
                    Ok(Ok(None)) => format!("{id}: no status"),
                    Ok(Err(e)) => format!("{id}: {e}"),
                    Err(_) => format!("{id}: store did not answer"),
                });
            }
            v
        });
        out.push_str("--- jobs\n");
        out.push_str(&states.join("\n"));
        out
    }

    /// Adds a job with its own script (the scripted LLM's model is the job id);
    /// returns its id. It is sent by the next [`Fleet::submit`].
    pub fn add_job(&self, name: &str, mut job: Value, script: Value) -> String {
        let id = format!("{name}-{}", short_id());
        std::fs::write(
            self.scripts_dir().join(format!("{id}.json")),
            script.to_string(),
        )
        .unwrap();
        let obj = job.as_object_mut().expect("job object");
        obj.insert("id".into(), id.clone().into());
        obj.entry("image").or_insert(TEST_IMAGE.into());
        let llm = obj.entry("llm").or_insert(json!({}));
        llm.as_object_mut()
            .unwrap()
            .insert("model".into(), id.clone().into());
        self.pending.lock().unwrap().push(job);
        self.job_ids.lock().unwrap().push(id.clone());
        id
    }

    /// Runs a `fleet` command to its end (killed after `within`).
    pub fn cli(&self, args: &[&str], within: Duration) -> CliOutput {
        self.cli_env(args, &[], within)
    }

    /// [`Fleet::cli`] with extra environment for this command only.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)], within: Duration) -> CliOutput {
        let n = self.procs.lock().unwrap().len();
        let name = format!("{}{n}", args[0]);
        let (out, err) = self.log_files(&name);
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .expect("spawn fleet");
        self.procs.lock().unwrap().push(Proc {
            name: name.clone(),
            child,
            logs: vec![out.clone(), err.clone()],
            exit: None,
        });
        let status = poll(
            within,
            &format!("`fleet {}` to end", args.join(" ")),
            || {
                let mut procs = self.procs.lock().unwrap();
                let p = procs.iter_mut().find(|p| p.name == name).unwrap();
                if p.alive() { None } else { p.exit }
            },
            || self.diagnostics(),
        );
        CliOutput {
            code: status.code(),
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// Writes the pending jobs to a job file; returns its path.
    pub fn job_file(&self) -> PathBuf {
        let jobs: Vec<Value> = std::mem::take(&mut *self.pending.lock().unwrap());
        assert!(!jobs.is_empty(), "no jobs to submit");
        let path = self.dir.path().join(format!("jobs-{}.json", short_id()));
        std::fs::write(&path, Value::Array(jobs).to_string()).unwrap();
        path
    }

    /// `fleet submit --json` of the pending jobs.
    pub fn submit(&self) -> Submitted {
        let file = self.job_file();
        let out = self.cli(
            &["submit", file.to_str().unwrap(), "--json"],
            Duration::from_secs(60),
        );
        assert_eq!(
            out.code,
            Some(0),
            "fleet submit failed:\n{}\n{}",
            out.stderr,
            self.diagnostics()
        );
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("submit --json printed {:?}: {e}", out.stdout));
        Submitted {
            batch_id: v["batch_id"].as_str().unwrap().to_string(),
            job_ids: v["job_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
        }
    }

    /// Every object of the job in the S3 store with its ETag and modification
    /// time, as the S3 server reports them (not as a worker wrote them down).
    pub fn object_versions(&self, id: &str) -> Vec<(String, String, String)> {
        let Store::S3(s3) = &self.store else {
            panic!("object_versions needs the S3 store")
        };
        let prefix = format!(
            "{}/{}",
            self.store_spec
                .trim_start_matches(&format!("s3://{BUCKET}/")),
            JobKeys(id).dir()
        );
        self.rt.block_on(async {
            let out = s3
                .client()
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(&prefix)
                .send()
                .await
                .expect("listing the job's objects");
            let mut v: Vec<(String, String, String)> = out
                .contents()
                .iter()
                .map(|o| {
                    (
                        o.key().unwrap_or_default().to_string(),
                        o.e_tag().unwrap_or_default().to_string(),
                        o.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            v.sort();
            v
        })
    }

    /// Runs an async block on the fleet's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn status(&self, id: &str) -> Option<StatusRecord> {
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), self.store.status(id)).await
            })
            .unwrap_or_else(|_| panic!("reading the status of {id}: timed out"))
            .unwrap_or_else(|e| panic!("reading the status of {id}: {e}"))
    }

    pub fn result(&self, id: &str) -> Option<JobResult> {
        self.rt
            .block_on(self.store.get_json::<JobResult>(&JobKeys(id).result()))
            .unwrap_or_else(|e| panic!("reading the result of {id}: {e}"))
    }

    /// A stored file of a job (`patch.diff`, `artifacts/x`, …).
    pub fn file(&self, id: &str, name: &str) -> Option<Vec<u8>> {
        self.rt
            .block_on(self.store.get(&format!("{}{name}", JobKeys(id).dir())))
            .unwrap_or_else(|e| panic!("reading {name} of {id}: {e}"))
            .map(|b| b.to_vec())
    }

    /// Every key under `jobs/<id>/`, relative to it.
    pub fn files(&self, id: &str) -> Vec<String> {
        let dir = JobKeys(id).dir();
        self.rt
            .block_on(self.store.list(&dir))
            .unwrap_or_else(|e| panic!("listing {dir}: {e}"))
            .into_iter()
            .map(|k| k.strip_prefix(&dir).unwrap_or(&k).to_string())
            .collect()
    }

    /// Waits until the job's status has `state`.
    pub fn wait_state(&self, id: &str, state: State, within: Duration) -> StatusRecord {
        poll(
            within,
            &format!("{id} to be {state}"),
            || self.status(id).filter(|s| s.state == state),
            || self.diagnostics(),
        )
    }

    /// Waits until every job is terminal (status and result stored); returns
    /// their status records in the order given.
    pub fn wait_terminal(&self, ids: &[String], within: Duration) -> Vec<StatusRecord> {
        let mut done: BTreeMap<String, StatusRecord> = BTreeMap::new();
        poll(
            within,
            &format!("{} jobs to end", ids.len()),
            || {
                for id in ids {
                    if done.contains_key(id) {
                        continue;
                    }
                    if let Some(s) = self.status(id).filter(|s| s.state.is_terminal()) {
                        done.insert(id.clone(), s);
                    }
                }
                (done.len() == ids.len()).then_some(())
            },
            || self.diagnostics(),
        );
        ids.iter().map(|id| done.remove(id).unwrap()).collect()
    }

    /// Waits until a container labelled with the job exists.
    pub fn wait_container(&self, id: &str, within: Duration) {
        poll(
            within,
            &format!("a container of {id}"),
            || (containers_for(id) > 0).then_some(()),
            || self.diagnostics(),
        );
    }

    /// Waits until no container of the job is left.
    pub fn wait_no_container(&self, id: &str, within: Duration) {
        poll(
            within,
            &format!("the containers of {id} to be removed"),
            || (containers_for(id) == 0).then_some(()),
            || format!("{}\n--- docker ps\n{}", self.diagnostics(), docker_ps(id)),
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Every child, SIGKILLed and reaped (the pid is ours until reaped).
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for mut p in procs {
            if p.alive() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        // Containers of this fleet's jobs a killed worker may have left.
        let ids = std::mem::take(&mut *self.job_ids.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            remove_containers(&id);
        }
        let queue = self.queue.clone();
        self.rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                if let Queue::Amqp(q) = &queue {
                    let _ = q.delete_topology().await;
                }
                queue.close().await;
            })
            .await;
        });
    }
}
