//! The agent-fleet benchmark (`cargo bench --bench fleet -- [FLAGS]`, or
//! `scripts/bench.sh [FLAGS]`, which builds what it needs first).
//!
//! A benchmark, never a test: it drives the release `fleet` binary, the Docker CLI
//! and (when it can) the OpenHands SDK baseline on this machine, and prints one
//! table where every figure and ratio comes from this run, with the aims of the
//! project beside them. Nothing here passes or fails; a missed aim is marked
//! `MISS`. The machine may be shared and noisy: read ratios, not absolute times.
//!
//! Rows:
//!   1  per-job overhead: N 1-step jobs through `fleet run --concurrency 1`
//!      (wall / N) vs the median bare `docker run --rm --network none IMAGE true`;
//!      per-phase medians from each job's metrics.json
//!   2  per-step overhead: (50-step job − 1-step job) / 49 vs a bare `docker exec`
//!   3  file_editor view + str_replace of a 1 MiB file vs `docker cp` out + in
//!   4  one `fleet run` with 200 (and 50) concurrent jobs of a slow scripted LLM
//!      (2 s per reply, 5 steps), local and Docker: peak RSS, CPU per step
//!   5  submit throughput (10,000 jobs to RabbitMQ) and enqueue-to-start latency
//!   6  1,000 jobs through 2 workers (Docker, 3 steps) vs bare `docker run`s at
//!      the same parallelism; worker peak RSS; what explains the two throughputs:
//!      CPU of the Docker daemons and of the machine over each batch, the fleet's
//!      CPU per job, Docker API calls per job (fleet vs bare, counted by a proxy
//!      on the engine socket over a small sample after the timed batches, and the
//!      fleet's own per-phase count from metrics.json)
//!   7  side by side with the OpenHands SDK (50-step-class scripted trajectories,
//!      `--workspace local`): per-step overhead, start to first LLM request, peak RSS
//!   8  row 6's batch on `--workspace local`: the fleet's own ceiling with Docker
//!      out of the way (jobs/min, worker peak RSS, CPU per job)
//!
//! Rows 6 and 8 are in fleet/batch.rs, the Docker API proxy in fleet/apicount.rs,
//! the /proc CPU accounting in fleet/cpustat.rs.
//!
//! Flags: --quick, --only ROWS (e.g. 1,2,7 or 1-3), --no-openhands, --no-rabbitmq,
//! --json FILE, --fleet PATH, --image IMAGE, --queue AMQP_URL, --openhands PATH,
//! --keep (keep the work directory and print where it is), --self-test.
//!
//! `cargo test --bench fleet` runs no benchmark: with `harness = false` #[test]s
//! are not run, so a run without arguments (how `cargo test` starts it) does the
//! self-test of the helpers instead (the Docker API proxy's request parser), as
//! does `--self-test`. `cargo bench` always passes `--bench`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Options

const USAGE: &str = "\
usage: cargo bench --bench fleet -- [--quick] [--only ROWS] [--no-openhands] [--no-rabbitmq]
                                    [--json FILE] [--fleet PATH] [--image IMAGE]
                                    [--queue AMQP_URL] [--openhands RUN_SH] [--keep]
                                    [--self-test]
  --quick          smaller counts for a smoke run (the table says which)
  --only ROWS      rows to run: 1,2,7 or 1-3 (default: all, 1-8)
  --no-openhands   row 7 quotes the SDK's reference figures instead of running it
  --no-rabbitmq    rows 5, 6 and 8 are not measured
  --json FILE      also write the raw numbers as JSON
  --fleet PATH     the fleet binary (default: target/release/fleet)
  --image IMAGE    workspace image (default: agent-fleet/workspace:latest)
  --queue URL      RabbitMQ (default: amqp://guest:guest@127.0.0.1:5672/%2f)
  --openhands PATH the SDK baseline script (default: ../shared/bench/openhands-baseline/run.sh)
  --keep           keep the work directory (job files, scripts, stores, logs)
  --self-test      check the harness's own helpers and exit (no benchmark)";

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    only: BTreeSet<u32>,
    no_openhands: bool,
    no_rabbitmq: bool,
    json: Option<PathBuf>,
    fleet: PathBuf,
    image: String,
    queue: String,
    openhands: PathBuf,
    keep: bool,
}

const LAST_ROW: u32 = 8;

fn parse_rows(s: &str) -> Result<BTreeSet<u32>> {
    let mut rows = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>()?, b.trim().parse::<u32>()?),
            None => {
                let n = part.parse::<u32>()?;
                (n, n)
            }
        };
        if a < 1 || b > LAST_ROW || a > b {
            bail!("--only {s}: rows are 1 to {LAST_ROW}");
        }
        rows.extend(a..=b);
    }
    if rows.is_empty() {
        bail!("--only {s}: no rows");
    }
    Ok(rows)
}

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        only: (1..=LAST_ROW).collect(),
        no_openhands: false,
        no_rabbitmq: false,
        json: None,
        fleet: PathBuf::from("target/release/fleet"),
        image: "agent-fleet/workspace:latest".into(),
        queue: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        openhands: PathBuf::from("../shared/bench/openhands-baseline/run.sh"),
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--quick" => o.quick = true,
            "--only" => o.only = parse_rows(&val("--only")?)?,
            "--no-openhands" => o.no_openhands = true,
            "--no-rabbitmq" => o.no_rabbitmq = true,
            "--json" => o.json = Some(PathBuf::from(val("--json")?)),
            "--fleet" => o.fleet = PathBuf::from(val("--fleet")?),
            "--image" => o.image = val("--image")?,
            "--queue" => o.queue = val("--queue")?,
            "--openhands" => o.openhands = PathBuf::from(val("--openhands")?),
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------
// Interruption: Ctrl-C / SIGTERM set a flag; every wait checks it and unwinds, so
// the guards below stop what this run started.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

macro_rules! progress {
    ($($t:tt)*) => {{
        eprintln!("[bench {}] {}", $crate::clock(), format!($($t)*));
    }};
}

fn clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

// ---------------------------------------------------------------------------
// Child processes: spawned with output to files, sampled through /proc while they
// run (VmHWM: peak RSS), reaped with wait4 for their CPU time, and stopped by pid
// on every path (SIGINT first: `fleet run` then removes its containers).

#[derive(Debug, Clone, Default)]
struct Exit {
    code: i32,
    wall_secs: f64,
    /// ru_maxrss from wait4, KiB. Not used for peaks: Linux carries the spawning
    /// process's own high-water RSS into it across fork/vfork + exec, so it reads
    /// this harness's size when that is larger. Kept in the raw JSON only.
    maxrss_kib: u64,
    /// Highest VmHWM sampled from /proc while it ran, KiB.
    hwm_kib: u64,
    /// user + system CPU seconds of the process and its reaped children.
    cpu_secs: f64,
}

struct Proc {
    name: String,
    pid: i32,
    started: Instant,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<Exit>,
    hwm_kib: u64,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> Result<Proc> {
        check_interrupt()?;
        let stdout = logs.join(format!("{name}.stdout"));
        let stderr = logs.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        // Reaped below with wait4; std's Child never waits on drop.
        let pid = child.id() as i32;
        Ok(Proc {
            name: name.into(),
            pid,
            started,
            stdout,
            stderr,
            exit: None,
            hwm_kib: 0,
        })
    }

    fn sample(&mut self) {
        if let Some(h) = proc_status_kib(self.pid, "VmHWM:") {
            self.hwm_kib = self.hwm_kib.max(h);
        }
    }

    /// Reaps the process if it has exited.
    fn poll(&mut self) -> Result<Option<Exit>> {
        if let Some(e) = &self.exit {
            return Ok(Some(e.clone()));
        }
        self.sample();
        let mut status: libc::c_int = 0;
        // SAFETY: plain syscall on a pid this process spawned and has not reaped.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == 0 {
            return Ok(None);
        }
        if r != self.pid {
            bail!(
                "wait4({}) for {}: {}",
                self.pid,
                self.name,
                std::io::Error::last_os_error()
            );
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            -1
        };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let e = Exit {
            code,
            wall_secs: self.started.elapsed().as_secs_f64(),
            maxrss_kib: ru.ru_maxrss as u64,
            hwm_kib: self.hwm_kib,
            cpu_secs: tv(ru.ru_utime) + tv(ru.ru_stime),
        };
        self.exit = Some(e.clone());
        Ok(Some(e))
    }

    /// Waits for the exit, sampling every 25 ms; past `timeout` the process is
    /// stopped and that is an error.
    fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.poll()? {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!(
                    "{} did not finish within {}s (stopped)",
                    self.name,
                    timeout.as_secs()
                );
            }
            nap(Duration::from_millis(25))?;
        }
    }

    /// Sends `sig`, waits up to `grace`, then SIGKILL.
    fn stop_with(&mut self, sig: libc::c_int, grace: Duration) {
        if self.exit.is_some() {
            return;
        }
        // SAFETY: a pid this process spawned and has not reaped (still ours).
        unsafe { libc::kill(self.pid, sig) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if matches!(self.poll(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        for _ in 0..100 {
            if matches!(self.poll(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.stop_with(libc::SIGINT, Duration::from_secs(60));
    }

    fn stderr_tail(&self) -> String {
        tail(&self.stderr, 3)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            progress!("stopping {} (pid {})", self.name, self.pid);
            self.stop();
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn proc_status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A container this run started: removed by id when dropped.
struct Container(String);

impl Container {
    fn start(image: &str) -> Result<Container> {
        let id = docker(&[
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            image,
            "sleep",
            "100000",
        ])?;
        Ok(Container(id.trim().to_string()))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn docker(args: &[&str]) -> Result<String> {
    check_interrupt()?;
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds one docker CLI invocation takes (it must succeed).
fn time_docker(args: &[&str]) -> Result<f64> {
    check_interrupt()?;
    let t = Instant::now();
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running docker")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

// ---------------------------------------------------------------------------
// Statistics

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// Linear interpolation between closest ranks; NaN for no data.
fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

fn ms(secs: f64) -> String {
    if !secs.is_finite() {
        return "n/a".into();
    }
    let m = secs * 1000.0;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn x(r: f64) -> String {
    if !r.is_finite() {
        "n/a".into()
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        // A small ratio reads better with its inverse beside it.
        format!("{r:.3}× (1/{:.0})", 1.0 / r)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn parse_ts(s: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp() as f64 + t.timestamp_subsec_nanos() as f64 / 1e9)
}

// ---------------------------------------------------------------------------
// The table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Met,
    Miss,
    /// A figure without an aim.
    Info,
    NotMeasured,
}

#[derive(Debug, Clone)]
enum Line {
    Row {
        id: String,
        measure: String,
        fleet: String,
        baseline: String,
        ratio: String,
        aim: String,
        verdict: Verdict,
    },
    /// A detail under the row above it, spanning the columns.
    Note(String, String),
}

#[derive(Default)]
struct Report {
    lines: Vec<Line>,
    raw: serde_json::Map<String, Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        id: &str,
        measure: impl Into<String>,
        fleet: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        aim: impl Into<String>,
        verdict: Verdict,
    ) {
        self.lines.push(Line::Row {
            id: id.into(),
            measure: measure.into(),
            fleet: fleet.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            aim: aim.into(),
            verdict,
        });
    }

    fn note(&mut self, id: &str, text: impl Into<String>) {
        self.lines.push(Line::Note(id.into(), text.into()));
    }

    fn not_measured(&mut self, id: &str, measure: &str, why: impl Into<String>) {
        self.row(
            id,
            measure,
            format!("not measured: {}", why.into()),
            "",
            "",
            "",
            Verdict::NotMeasured,
        );
    }

    fn raw(&mut self, key: &str, v: Value) {
        self.raw.insert(key.into(), v);
    }

    fn render(&self) -> String {
        let headers = ["row", "measure", "fleet", "baseline", "ratio", "aim", ""];
        let mut w = headers.map(|h| h.chars().count());
        for l in &self.lines {
            if let Line::Row {
                id,
                measure,
                fleet,
                baseline,
                ratio,
                aim,
                ..
            } = l
            {
                for (i, s) in [id, measure, fleet, baseline, ratio, aim]
                    .iter()
                    .enumerate()
                {
                    w[i] = w[i].max(s.chars().count());
                }
            }
        }
        let pad = |s: &str, n: usize| {
            let mut s = s.to_string();
            let c = s.chars().count();
            s.extend(std::iter::repeat_n(' ', n.saturating_sub(c)));
            s
        };
        let mut out = String::new();
        let head: Vec<String> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| pad(h, w[i]))
            .collect();
        let _ = writeln!(out, "{}", head.join("  ").trim_end());
        let total: usize = w.iter().sum::<usize>() + 2 * (w.len() - 1);
        let _ = writeln!(out, "{}", "-".repeat(total.min(160)));
        for l in &self.lines {
            match l {
                Line::Row {
                    id,
                    measure,
                    fleet,
                    baseline,
                    ratio,
                    aim,
                    verdict,
                } => {
                    let v = match verdict {
                        Verdict::Met => "met",
                        Verdict::Miss => "MISS",
                        Verdict::Info | Verdict::NotMeasured => "",
                    };
                    let cells = [
                        pad(id, w[0]),
                        pad(measure, w[1]),
                        pad(fleet, w[2]),
                        pad(baseline, w[3]),
                        pad(ratio, w[4]),
                        pad(aim, w[5]),
                        v.to_string(),
                    ];
                    let _ = writeln!(out, "{}", cells.join("  ").trim_end());
                }
                Line::Note(id, text) => {
                    let _ = writeln!(out, "{}  . {}", pad(id, w[0]), text);
                }
            }
        }
        out
    }
}

fn verdict(met: bool) -> Verdict {
    if met { Verdict::Met } else { Verdict::Miss }
}

// ---------------------------------------------------------------------------
// Job files, scripts, stores

struct Ctx {
    o: Opts,
    work: PathBuf,
    logs: PathBuf,
    scripts: PathBuf,
    seq: AtomicUsize,
}

impl Ctx {
    /// A fresh directory under the work dir.
    fn dir(&self, name: &str) -> Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let d = self.work.join(format!("{n:02}-{name}"));
        fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn script(&self, model: &str, steps: Vec<Value>) -> Result<()> {
        let s = json!({"steps": steps, "usage": {"prompt_tokens": 1000, "completion_tokens": 50}});
        fs::write(
            self.scripts.join(format!("{model}.json")),
            serde_json::to_vec_pretty(&s)?,
        )?;
        Ok(())
    }

    /// A script that serves `step` at every turn (`repeat_last`): a job on it runs
    /// until `limits.max_iterations`. Long scripted trajectories need this, because
    /// the scripted LLM picks its step by the assistant messages in the request and
    /// condensation (past 80 events) drops some of them: a script's later steps,
    /// its `finish` included, are never reached past ~40 steps.
    fn script_loop(&self, model: &str, step: Value) -> Result<()> {
        let s = json!({"steps": [step], "repeat_last": true,
                       "usage": {"prompt_tokens": 1000, "completion_tokens": 50}});
        fs::write(
            self.scripts.join(format!("{model}.json")),
            serde_json::to_vec_pretty(&s)?,
        )?;
        Ok(())
    }

    /// A job file of `jobs` (each `(id, model)`) with common defaults.
    fn job_file(&self, dir: &Path, jobs: &[(String, String)], extra: Value) -> Result<PathBuf> {
        let jobs: Vec<Value> = jobs
            .iter()
            .map(|(id, model)| json!({"id": id, "llm": {"model": model}}))
            .collect();
        self.job_file_values(dir, jobs, extra)
    }

    /// A job file of partial jobs (each with an `id`) over common defaults.
    fn job_file_values(&self, dir: &Path, jobs: Vec<Value>, extra: Value) -> Result<PathBuf> {
        let mut defaults = json!({
            "image": self.o.image,
            "limits": {"max_iterations": 200, "timeout_secs": 1200},
        });
        merge(&mut defaults, extra);
        let jobs: Vec<Value> = jobs
            .into_iter()
            .map(|mut j| {
                let id = j["id"].as_str().unwrap_or("job").to_string();
                j["task"] = json!(format!("benchmark job {id}"));
                j
            })
            .collect();
        let path = dir.join("jobs.json");
        fs::write(
            &path,
            serde_json::to_vec_pretty(&json!({"defaults": defaults, "jobs": jobs}))?,
        )?;
        Ok(path)
    }

    fn fleet(&self) -> Command {
        let mut c = Command::new(&self.o.fleet);
        for v in [
            "FLEET_STORE",
            "FLEET_QUEUE",
            "FLEET_CONCURRENCY",
            "FLEET_QUEUE_PREFIX",
            "FLEET_METRICS_ADDR",
            "FLEET_WEBHOOK_URL",
            "LLM_MODEL",
            "LLM_BASE_URL",
            "LLM_API_KEY",
            "RUST_LOG",
        ] {
            c.env_remove(v);
        }
        c.env("FLEET_DEFAULT_IMAGE", &self.o.image);
        c
    }

    /// `fleet run JOBS` to its end; returns the exit and the store.
    fn fleet_run(
        &self,
        name: &str,
        jobs: &Path,
        store: &Path,
        concurrency: usize,
        workspace: &str,
        timeout: Duration,
    ) -> Result<Exit> {
        let mut cmd = self.fleet();
        cmd.arg("run")
            .arg(jobs)
            .arg("--store")
            .arg(store)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--workspace", workspace])
            .arg("--mock-llm")
            .arg(&self.scripts)
            .args(["--quiet", "--json"]);
        let mut p = Proc::spawn(name, &mut cmd, &self.logs)?;
        let e = p.wait(timeout)?;
        if e.code != 0 && e.code != 1 {
            bail!("fleet run exited {}: {}", e.code, p.stderr_tail());
        }
        Ok(e)
    }
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn finish() -> Value {
    json!({"tool": "finish", "args": {"message": "done"}})
}

fn terminal(cmd: &str) -> Value {
    json!({"tool": "terminal", "args": {"command": cmd}})
}

/// One job's records in a store.
#[derive(Debug, Default, Clone)]
struct JobRec {
    id: String,
    outcome: String,
    steps: f64,
    duration: f64,
    phases: BTreeMap<String, f64>,
    /// metrics.json `docker_api_calls` (phase → calls, and `total`); empty when
    /// the worker does not write it.
    api_calls: BTreeMap<String, f64>,
    /// (state, at) from status.json history.
    history: Vec<(String, f64)>,
    events: Vec<Value>,
}

impl JobRec {
    fn at(&self, state: &str) -> Option<f64> {
        self.history
            .iter()
            .find(|(s, _)| s == state)
            .map(|(_, t)| *t)
    }
    fn terminal_at(&self) -> Option<f64> {
        self.history
            .iter()
            .rev()
            .find(|(s, _)| !matches!(s.as_str(), "queued" | "running" | "retrying"))
            .map(|(_, t)| *t)
    }
    fn phase(&self, p: &str) -> f64 {
        self.phases.get(p).copied().unwrap_or(f64::NAN)
    }

    /// Tool execution times (ActionEvent → its ObservationEvent), with the
    /// action's arguments.
    fn tool_times(&self) -> Vec<(Value, f64)> {
        let mut out = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            if e["kind"] != "ActionEvent" {
                continue;
            }
            let Some(t0) = e["timestamp"].as_str().and_then(parse_ts) else {
                continue;
            };
            let call = &e["tool_call_id"];
            if let Some(obs) = self.events[i + 1..]
                .iter()
                .find(|o| o["kind"] == "ObservationEvent" && &o["tool_call_id"] == call)
                && let Some(t1) = obs["timestamp"].as_str().and_then(parse_ts)
            {
                let mut a = e.clone();
                a["is_error"] = obs["is_error"].clone();
                out.push((a, t1 - t0));
            }
        }
        out
    }

    /// ObservationEvent → next ActionEvent: the LLM round trip plus the agent's
    /// own work between steps.
    fn llm_gaps(&self) -> Vec<f64> {
        let mut out = Vec::new();
        let mut last_obs: Option<f64> = None;
        for e in &self.events {
            let t = e["timestamp"].as_str().and_then(parse_ts);
            match e["kind"].as_str() {
                Some("ObservationEvent") => last_obs = t,
                Some("ActionEvent") => {
                    if let (Some(a), Some(b)) = (last_obs.take(), t) {
                        out.push(b - a);
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn first_ts(&self, kind: &str) -> Option<f64> {
        self.events
            .iter()
            .find(|e| e["kind"] == kind)
            .and_then(|e| e["timestamp"].as_str())
            .and_then(parse_ts)
    }
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&fs::read(p).ok()?).ok()
}

fn read_store(store: &Path, with_events: bool) -> Result<Vec<JobRec>> {
    let mut out = Vec::new();
    let dir = store.join("jobs");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let d = entry?.path();
        let mut r = JobRec {
            id: d.file_name().unwrap_or_default().to_string_lossy().into(),
            ..Default::default()
        };
        if let Some(res) = read_json(&d.join("result.json")) {
            r.outcome = res["outcome"].as_str().unwrap_or("").into();
            r.steps = res["steps"].as_f64().unwrap_or(0.0);
            r.duration = res["duration_secs"].as_f64().unwrap_or(f64::NAN);
        }
        if let Some(m) = read_json(&d.join("metrics.json")) {
            for (k, v) in m["phases_secs"].as_object().into_iter().flatten() {
                r.phases.insert(k.clone(), v.as_f64().unwrap_or(f64::NAN));
            }
            for (k, v) in m["docker_api_calls"].as_object().into_iter().flatten() {
                if let Some(v) = v.as_f64() {
                    r.api_calls.insert(k.clone(), v);
                }
            }
        }
        if let Some(s) = read_json(&d.join("status.json")) {
            if r.outcome.is_empty() {
                r.outcome = s["state"].as_str().unwrap_or("").into();
            }
            for h in s["history"].as_array().into_iter().flatten() {
                if let (Some(st), Some(at)) =
                    (h["state"].as_str(), h["at"].as_str().and_then(parse_ts))
                {
                    r.history.push((st.into(), at));
                }
            }
        }
        if with_events && let Ok(f) = fs::File::open(d.join("events.jsonl")) {
            for line in std::io::BufReader::new(f).lines() {
                if let Ok(v) = serde_json::from_str::<Value>(&line?) {
                    r.events.push(v);
                }
            }
        }
        out.push(r);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The phases of metrics.json's `docker_api_calls`, in pipeline order.
const API_PHASES: [&str; 6] = [
    "workspace_start",
    "input",
    "agent",
    "collect",
    "teardown",
    "total",
];

/// Medians over the jobs that have it of metrics.json's `docker_api_calls`, by
/// phase (API_PHASES first, then any other key, in order); None when no job has it.
fn api_call_medians(recs: &[JobRec]) -> Option<Vec<(String, f64)>> {
    let with: Vec<&JobRec> = recs.iter().filter(|j| !j.api_calls.is_empty()).collect();
    if with.is_empty() {
        return None;
    }
    let keys: BTreeSet<&String> = with.iter().flat_map(|j| j.api_calls.keys()).collect();
    let mut ordered: Vec<String> = API_PHASES.iter().map(|p| p.to_string()).collect();
    ordered.extend(
        keys.into_iter()
            .filter(|k| !API_PHASES.contains(&k.as_str()))
            .cloned(),
    );
    Some(
        ordered
            .into_iter()
            .map(|k| {
                let v: Vec<f64> = with
                    .iter()
                    .map(|j| j.api_calls.get(&k).copied().unwrap_or(f64::NAN))
                    .collect();
                let m = median(&v);
                (k, m)
            })
            .collect(),
    )
}

/// The medians as a JSON object (null when absent).
fn api_medians_json(m: &Option<Vec<(String, f64)>>) -> Value {
    match m {
        None => Value::Null,
        Some(v) => Value::Object(v.iter().map(|(k, x)| (k.clone(), json!(x))).collect()),
    }
}

/// "workspace_start 4 · input 1 · … · total 12", or n/a.
fn api_calls_text(m: &Option<Vec<(String, f64)>>) -> String {
    match m {
        None => "n/a (no docker_api_calls in metrics.json)".into(),
        Some(v) => v
            .iter()
            .map(|(k, x)| {
                if !x.is_finite() {
                    format!("{k} n/a")
                } else if *x == x.round() {
                    format!("{k} {x:.0}")
                } else {
                    format!("{k} {x:.1}")
                }
            })
            .collect::<Vec<_>>()
            .join(" · "),
    }
}

/// "2 a, 1 b" for ["a", "b", "a"].
fn count_strs(xs: &[String]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for x in xs {
        *m.entry(x.as_str()).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcomes(jobs: &[JobRec]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs {
        *m.entry(if j.outcome.is_empty() {
            "none"
        } else {
            &j.outcome
        })
        .or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most jobs between `running` and terminal at once.
fn peak_in_flight(jobs: &[JobRec]) -> usize {
    let mut ev: Vec<(f64, i32)> = Vec::new();
    for j in jobs {
        if let (Some(a), Some(b)) = (j.at("running"), j.terminal_at()) {
            ev.push((a, 1));
            ev.push((b, -1));
        }
    }
    ev.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (mut cur, mut peak) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        peak = peak.max(cur);
    }
    peak as usize
}

// ---------------------------------------------------------------------------
// Row 1: per-job overhead

const PHASES: [&str; 6] = [
    "workspace_start",
    "input",
    "agent",
    "collect",
    "teardown",
    "store",
];

fn row1(c: &Ctx, r: &mut Report) -> Result<()> {
    let n = if c.o.quick { 5 } else { 10 };
    progress!("row 1: per-job overhead, {n} 1-step jobs vs {n}+{n} bare docker runs");
    c.script("finish1", vec![finish()])?;
    let run_args = ["run", "--rm", "--network", "none", &c.o.image, "true"];
    // Warm-up, not recorded: page cache, image layers, the binary.
    time_docker(&run_args)?;
    let d = c.dir("row1-warmup")?;
    let jobs = c.job_file(&d, &[("warm".into(), "finish1".into())], json!({}))?;
    c.fleet_run(
        "row1-warmup",
        &jobs,
        &d.join("store"),
        1,
        "docker",
        Duration::from_secs(300),
    )?;

    let mut bare = Vec::new();
    for _ in 0..n {
        bare.push(time_docker(&run_args)?);
    }
    let d = c.dir("row1")?;
    let ids: Vec<(String, String)> = (0..n)
        .map(|i| (format!("job-{i:02}"), "finish1".into()))
        .collect();
    let jobs = c.job_file(&d, &ids, json!({}))?;
    let store = d.join("store");
    let e = c.fleet_run(
        "row1",
        &jobs,
        &store,
        1,
        "docker",
        Duration::from_secs(60 * n as u64),
    )?;
    // Bare runs on both sides of the batch, against drift on a shared machine.
    for _ in 0..n {
        bare.push(time_docker(&run_args)?);
    }
    let recs = read_store(&store, false)?;
    let per_job = e.wall_secs / n as f64;
    let bare_med = median(&bare);
    let rt = ratio(per_job, bare_med);
    r.row(
        "1",
        format!("per-job overhead, {n} × 1-step job, --concurrency 1: wall / {n}"),
        format!("{}/job", ms(per_job)),
        format!(
            "docker run --rm --network none true: {} (median of {})",
            ms(bare_med),
            bare.len()
        ),
        x(rt),
        "≤ 1.2×",
        verdict(rt <= 1.2),
    );
    let mut phases = serde_json::Map::new();
    let mut parts = Vec::new();
    for p in PHASES {
        let m = median(&recs.iter().map(|j| j.phase(p)).collect::<Vec<_>>());
        phases.insert(p.into(), json!(m));
        parts.push(format!("{p} {:.0}", m * 1000.0));
    }
    let dur = median(&recs.iter().map(|j| j.duration).collect::<Vec<_>>());
    let api = api_call_medians(&recs);
    r.note(
        "1",
        format!(
            "phase medians (ms): {}; Docker API calls (metrics.json docker_api_calls, medians): {}",
            parts.join(" · "),
            api_calls_text(&api)
        ),
    );
    r.note(
        "1",
        format!(
            "median job duration (result.json) {}; process wall {:.2} s incl. start-up; outcomes: {}",
            ms(dur),
            e.wall_secs,
            outcomes(&recs)
        ),
    );
    r.raw(
        "row1_per_job",
        json!({
            "jobs": n, "fleet_wall_secs": e.wall_secs, "fleet_per_job_secs": per_job,
            "bare_docker_run_secs": bare, "bare_median_secs": bare_med, "ratio": rt,
            "phase_medians_secs": phases, "job_duration_median_secs": dur,
            "docker_api_calls_medians": api_medians_json(&api),
            "job_durations_secs": recs.iter().map(|j| j.duration).collect::<Vec<_>>(),
            "outcomes": outcomes(&recs),
        }),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Row 2: per-step overhead

fn row2(c: &Ctx, r: &mut Report) -> Result<()> {
    let reps = if c.o.quick { 1 } else { 3 };
    let n_exec = if c.o.quick { 10 } else { 30 };
    progress!("row 2: per-step overhead, {reps} × (50-step, 1-step) jobs vs {n_exec} docker execs");
    // Every step is `terminal true`; the jobs end at max_iterations (1 and 50): see
    // `script_loop` for why a scripted `finish` cannot close a 50-step job.
    c.script_loop("true-loop", terminal("true"))?;

    let ctr = Container::start(&c.o.image)?;
    let exec_args = ["exec", ctr.0.as_str(), "true"];
    time_docker(&exec_args)?;
    let mut bare = Vec::new();
    for _ in 0..n_exec / 2 {
        bare.push(time_docker(&exec_args)?);
    }

    let d = c.dir("row2")?;
    let mut jobs = Vec::new();
    for i in 0..reps {
        for (id, steps) in [(format!("one-{i}"), 1), (format!("fifty-{i}"), 50)] {
            jobs.push(json!({"id": id, "limits": {"max_iterations": steps}}));
        }
    }
    // The same `true` 50 times is a repeated action/observation: lift the stuck
    // thresholds so the job runs all its steps.
    let common = json!({"llm": {"model": "true-loop"},
                        "stuck": {"action_observation": 1000, "action_error": 1000,
                                  "monologue": 1000, "alternating_pattern": 1000}});
    let jobs = c.job_file_values(&d, jobs, common)?;
    let store = d.join("store");
    c.fleet_run("row2", &jobs, &store, 1, "docker", Duration::from_secs(600))?;
    for _ in 0..n_exec - n_exec / 2 {
        bare.push(time_docker(&exec_args)?);
    }
    drop(ctr);

    let recs = read_store(&store, true)?;
    let agent = |prefix: &str| -> Vec<f64> {
        recs.iter()
            .filter(|j| j.id.starts_with(prefix))
            .map(|j| j.phase("agent"))
            .collect()
    };
    let (a1, a50) = (agent("one-"), agent("fifty-"));
    let per_step = (median(&a50) - median(&a1)) / 49.0;
    let bare_med = median(&bare);
    let rt = ratio(per_step, bare_med);
    r.row(
        "2",
        "per-step overhead: (50-step − 1-step job) / 49, `terminal true`",
        format!("{}/step", ms(per_step)),
        format!(
            "docker exec C true: {} (median of {})",
            ms(bare_med),
            bare.len()
        ),
        x(rt),
        // A shell session needs no exec per step (issue 11).
        "≤ 0.2×",
        verdict(rt <= 0.2),
    );
    let fifty: Vec<&JobRec> = recs.iter().filter(|j| j.id.starts_with("fifty-")).collect();
    let tool: Vec<f64> = fifty
        .iter()
        .flat_map(|j| j.tool_times())
        .filter(|(a, _)| a["tool_name"] == "terminal")
        .map(|(_, t)| t)
        .collect();
    let gaps: Vec<f64> = fifty.iter().flat_map(|j| j.llm_gaps()).collect();
    r.note(
        "2",
        format!(
            "of a step: terminal exec (Action→Observation) median {}, LLM+agent (Observation→next Action) median {}; outcomes: {} (ended by max_iterations on purpose)",
            ms(median(&tool)),
            ms(median(&gaps)),
            outcomes(&recs)
        ),
    );
    r.raw(
        "row2_per_step",
        json!({
            "reps": reps, "agent_secs_1_step": a1, "agent_secs_50_step": a50,
            "per_step_secs": per_step, "bare_docker_exec_secs": bare, "bare_median_secs": bare_med,
            "ratio": rt, "terminal_exec_median_secs": median(&tool),
            "llm_plus_agent_median_secs": median(&gaps), "outcomes": outcomes(&recs),
        }),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Row 3: file_editor on a 1 MiB file vs docker cp

const BIG_LINES: usize = 16_384;

fn big_line(i: usize) -> String {
    // 64 bytes with the newline: 16,384 lines make exactly 1 MiB.
    let mut s = format!("{i:06} the quick brown fox jumps over the lazy dog; filler text");
    while s.len() < 63 {
        s.push('.');
    }
    s.truncate(63);
    s.push('\n');
    s
}

fn row3(c: &Ctx, r: &mut Report) -> Result<()> {
    let reps = if c.o.quick { 1 } else { 3 };
    let n_cp = if c.o.quick { 3 } else { 10 };
    progress!(
        "row 3: file_editor view + str_replace on 1 MiB, {reps} jobs vs {n_cp} docker cp pairs"
    );
    let d = c.dir("row3")?;
    let input = d.join("input");
    fs::create_dir_all(&input)?;
    let big: String = (0..BIG_LINES).map(big_line).collect();
    fs::write(input.join("big.txt"), &big)?;
    let target = big_line(BIG_LINES / 2);
    let target = target.trim_end();
    c.script(
        "editor1m",
        vec![
            json!({"tool": "file_editor", "args": {"command": "view", "path": "/workspace/big.txt"}}),
            json!({"tool": "file_editor", "args": {"command": "str_replace", "path": "/workspace/big.txt",
                   "old_str": target, "new_str": target.replace("quick", "QUICK")}}),
            finish(),
        ],
    )?;
    let ids: Vec<(String, String)> = (0..reps)
        .map(|i| (format!("edit-{i}"), "editor1m".into()))
        .collect();
    let jobs = c.job_file(&d, &ids, json!({"input": {"path": input}}))?;
    let store = d.join("store");
    c.fleet_run("row3", &jobs, &store, 1, "docker", Duration::from_secs(600))?;
    let recs = read_store(&store, true)?;
    let (mut view, mut repl, mut errors) = (Vec::new(), Vec::new(), 0);
    for j in &recs {
        for (a, t) in j.tool_times() {
            if a["is_error"] == true {
                errors += 1;
            }
            match a["arguments"]["command"].as_str() {
                Some("view") => view.push(t),
                Some("str_replace") => repl.push(t),
                _ => {}
            }
        }
    }
    let fleet_rt = median(&view) + median(&repl);

    let ctr = Container::start(&c.o.image)?;
    let local = d.join("big.txt");
    let back = d.join("big.out");
    fs::write(&local, &big)?;
    let remote = format!("{}:/workspace/big.txt", ctr.0);
    let (l, b) = (
        local.to_string_lossy().to_string(),
        back.to_string_lossy().to_string(),
    );
    time_docker(&["cp", &l, &remote])?;
    let (mut outs, mut ins, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n_cp {
        let o = time_docker(&["cp", &remote, &b])?;
        let i = time_docker(&["cp", &l, &remote])?;
        outs.push(o);
        ins.push(i);
        pairs.push(o + i);
    }
    drop(ctr);
    let bare = median(&pairs);
    let rt = ratio(fleet_rt, bare);
    r.row(
        "3",
        "file_editor view + str_replace, 1 MiB file",
        ms(fleet_rt),
        format!(
            "docker cp out + in: {} (median of {})",
            ms(bare),
            pairs.len()
        ),
        x(rt),
        "",
        Verdict::Info,
    );
    r.note(
        "3",
        format!(
            "view {} + str_replace {} (medians of {}); docker cp out {} / in {}; editor errors: {errors}; outcomes: {}",
            ms(median(&view)),
            ms(median(&repl)),
            view.len(),
            ms(median(&outs)),
            ms(median(&ins)),
            outcomes(&recs)
        ),
    );
    r.raw(
        "row3_file_editor",
        json!({
            "file_bytes": big.len(), "view_secs": view, "str_replace_secs": repl,
            "fleet_round_trip_secs": fleet_rt, "docker_cp_out_secs": outs, "docker_cp_in_secs": ins,
            "docker_cp_pair_median_secs": bare, "ratio": rt, "editor_errors": errors,
            "outcomes": outcomes(&recs),
        }),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Row 4: many concurrent jobs of a slow LLM in one process

fn row4(c: &Ctx, r: &mut Report) -> Result<()> {
    let (big, small) = if c.o.quick { (40, 20) } else { (200, 50) };
    let mut steps: Vec<Value> = (1..=4)
        .map(|i| {
            let mut s = terminal(&format!("echo step-{i}"));
            s["delay_ms"] = json!(2000);
            s
        })
        .collect();
    let mut f = finish();
    f["delay_ms"] = json!(2000);
    steps.push(f);
    c.script("slow5", steps)?;
    let cases = [
        (big, "local", 150.0, "1"),
        (big, "docker", 150.0, "2"),
        (small, "docker", 100.0, "3"),
    ];
    let quick = if c.o.quick { " (quick)" } else { "" };
    let mut raws = Vec::new();
    for (n, ws, aim_mib, _) in cases {
        progress!("row 4: {n} concurrent slow jobs (2 s per reply, 5 steps), --workspace {ws}");
        let d = c.dir(&format!("row4-{ws}-{n}"))?;
        let ids: Vec<(String, String)> = (0..n)
            .map(|i| (format!("slow-{i:03}"), "slow5".into()))
            .collect();
        let jobs = c.job_file(&d, &ids, json!({"limits": {"memory_mb": 256}}))?;
        let store = d.join("store");
        let e = match c.fleet_run(
            &format!("row4-{ws}-{n}"),
            &jobs,
            &store,
            n,
            ws,
            Duration::from_secs(1800),
        ) {
            Ok(e) => e,
            Err(err) => {
                check_interrupt()?;
                r.not_measured(
                    "4",
                    &format!("{n} concurrent slow jobs, {ws}"),
                    format!("{err:#}"),
                );
                continue;
            }
        };
        let recs = read_store(&store, false)?;
        let total_steps: f64 = recs.iter().map(|j| j.steps).sum();
        let peak_kib = e.hwm_kib;
        let cpu_step = e.cpu_secs / total_steps.max(1.0);
        let peak_mib = peak_kib as f64 / 1024.0;
        let inflight = peak_in_flight(&recs);
        let ws_start = median(
            &recs
                .iter()
                .map(|j| j.phase("workspace_start"))
                .collect::<Vec<_>>(),
        );
        r.row(
            "4",
            format!("{n} concurrent jobs, 5 steps × 2 s replies, {ws}: peak RSS{quick}"),
            mib(peak_kib),
            "",
            "",
            format!("< {aim_mib:.0} MB"),
            verdict(peak_mib * 1.048_576 < aim_mib),
        );
        r.note(
            "4",
            format!(
                "CPU {:.2} ms per job step (the whole run's {:.2} s over {total_steps:.0} steps{}); wall {:.1} s; median workspace_start {}; peak jobs in flight {inflight}; outcomes: {}",
                cpu_step * 1000.0,
                e.cpu_secs,
                if ws == "local" { ", incl. the step commands" } else { ", fleet process only" },
                e.wall_secs,
                ms(ws_start),
                outcomes(&recs)
            ),
        );
        raws.push(json!({
            "jobs": n, "workspace": ws, "peak_rss_kib": peak_kib, "ru_maxrss_kib": e.maxrss_kib,
            "vmhwm_kib": e.hwm_kib, "cpu_secs": e.cpu_secs, "steps": total_steps,
            "cpu_secs_per_step": cpu_step, "wall_secs": e.wall_secs, "peak_in_flight": inflight,
            "workspace_start_median_secs": ws_start,
            "aim_mb": aim_mib, "outcomes": outcomes(&recs),
        }));
    }
    r.raw("row4_concurrent", json!(raws));
    Ok(())
}

// ---------------------------------------------------------------------------
// RabbitMQ helpers (rows 5 and 6)

/// host:port of an amqp URL.
fn amqp_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("amqp://")?;
    let hostpart = rest.split('/').next()?;
    let hostport = hostpart.rsplit('@').next()?;
    Some(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    })
}

fn rabbit_answers(url: &str) -> bool {
    let Some(addr) = amqp_addr(url) else {
        return false;
    };
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Where one row's queues live: a vhost of its own when rabbitmqctl works here
/// (deleted afterwards with everything in it), else a queue-name prefix on the
/// given vhost (queues stay behind).
struct Broker {
    url: String,
    prefix: String,
    vhost: Option<String>,
}

impl Broker {
    fn open(base: &str, tag: &str) -> Result<Broker> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("fleet-bench-{tag}-{id}");
        let local = amqp_addr(base)
            .map(|a| a.starts_with("127.") || a.starts_with("localhost"))
            .unwrap_or(false);
        if local && rabbitmqctl(&["add_vhost", &name]).is_ok() {
            let b = Broker {
                url: with_vhost(base, &name),
                prefix: format!("{name}."),
                vhost: Some(name.clone()),
            };
            rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])?;
            return Ok(b);
        }
        Ok(Broker {
            url: base.to_string(),
            prefix: format!("{name}."),
            vhost: None,
        })
    }

    fn note(&self) -> String {
        match &self.vhost {
            Some(v) => format!("vhost {v} (deleted after the row)"),
            None => format!("queue prefix {} (left on the broker)", self.prefix),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(v) = &self.vhost {
            let _ = rabbitmqctl(&["delete_vhost", v]);
        }
    }
}

/// The URL with its vhost replaced (amqp://user:pass@host:port/VHOST).
fn with_vhost(base: &str, vhost: &str) -> String {
    let rest = base.strip_prefix("amqp://").unwrap_or(base);
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("amqp://{authority}/{vhost}")
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `fleet mock-llm` on 127.0.0.1 (for workers); returns it and its base URL.
fn start_mock(c: &Ctx, name: &str) -> Result<(Proc, String)> {
    let mut cmd = c.fleet();
    cmd.arg("mock-llm")
        .arg("--scripts")
        .arg(&c.scripts)
        .args(["--addr", "127.0.0.1:0"]);
    let mut p = Proc::spawn(name, &mut cmd, &c.logs)?;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = fs::read_to_string(&p.stdout).unwrap_or_default();
        if let Some(url) = s.lines().find(|l| l.starts_with("http")) {
            return Ok((p, url.trim().to_string()));
        }
        if p.poll()?.is_some() {
            bail!("fleet mock-llm exited: {}", p.stderr_tail());
        }
        if Instant::now() > end {
            bail!("fleet mock-llm printed no URL within 30 s");
        }
        nap(Duration::from_millis(50))?;
    }
}

/// A `fleet worker` on `b`, ready (its slots line printed); `args` and `env` are
/// added to its command line and environment.
#[allow(clippy::too_many_arguments)]
fn start_worker(
    c: &Ctx,
    name: &str,
    b: &Broker,
    store: &Path,
    llm: &str,
    conc: usize,
    args: &[&str],
    env: &[(&str, String)],
) -> Result<Proc> {
    let mut cmd = c.fleet();
    cmd.arg("worker")
        .args(["--queue", &b.url])
        .arg("--store")
        .arg(store)
        .args(["--concurrency", &conc.to_string()])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--grace-secs", "30"])
        .args(args)
        .env("FLEET_QUEUE_PREFIX", &b.prefix)
        .env("LLM_BASE_URL", llm);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(name, &mut cmd, &c.logs)?;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = fs::read_to_string(&p.stderr).unwrap_or_default();
        if s.contains("slots, metrics on") {
            return Ok(p);
        }
        if p.poll()?.is_some() {
            bail!("fleet worker exited: {}", p.stderr_tail());
        }
        if Instant::now() > end {
            bail!("fleet worker not ready within 60 s: {}", p.stderr_tail());
        }
        nap(Duration::from_millis(50))?;
    }
}

fn stop_worker(p: &mut Proc) -> Option<Exit> {
    p.stop_with(libc::SIGTERM, Duration::from_secs(60));
    p.exit.clone()
}

fn submit(c: &Ctx, name: &str, b: &Broker, store: &Path, args: &[&str]) -> Result<Exit> {
    let mut cmd = c.fleet();
    cmd.arg("submit")
        .args(args)
        .args(["--queue", &b.url])
        .arg("--store")
        .arg(store)
        .env("FLEET_QUEUE_PREFIX", &b.prefix);
    let mut p = Proc::spawn(name, &mut cmd, &c.logs)?;
    let e = p.wait(Duration::from_secs(600))?;
    if e.code != 0 {
        bail!("fleet submit exited {}: {}", e.code, p.stderr_tail());
    }
    Ok(e)
}

fn rabbit_skip(c: &Ctx) -> Option<String> {
    if c.o.no_rabbitmq {
        return Some("--no-rabbitmq".into());
    }
    if !rabbit_answers(&c.o.queue) {
        return Some(format!(
            "no RabbitMQ answering at {} (start one: scripts/services/rabbitmq.sh)",
            amqp_addr(&c.o.queue).unwrap_or_else(|| c.o.queue.clone())
        ));
    }
    None
}

// ---------------------------------------------------------------------------
// Row 5: submit throughput and enqueue-to-start latency

fn row5(c: &Ctx, r: &mut Report) -> Result<()> {
    if let Some(why) = rabbit_skip(c) {
        r.not_measured("5", "submit throughput (10,000 jobs)", why.clone());
        r.not_measured("5", "enqueue-to-start latency p50 / p95", why);
        return Ok(());
    }
    c.script("finish1", vec![finish()])?;
    if let Err(e) = row5_submit(c, r) {
        check_interrupt()?;
        r.not_measured("5", "submit throughput", format!("{e:#}"));
    }
    if let Err(e) = row5_latency(c, r) {
        check_interrupt()?;
        r.not_measured("5", "enqueue-to-start latency", format!("{e:#}"));
    }
    Ok(())
}

fn row5_submit(c: &Ctx, r: &mut Report) -> Result<()> {
    let n = if c.o.quick { 1000 } else { 10_000 };
    progress!("row 5: fleet submit of {n} jobs");
    let d = c.dir("row5-submit")?;
    let ids: Vec<(String, String)> = (0..n)
        .map(|i| (format!("sub-{i:05}"), "finish1".into()))
        .collect();
    let jobs = c.job_file(&d, &ids, json!({}))?;
    let b = Broker::open(&c.o.queue, "submit")?;
    let store = d.join("store");
    let e = submit(
        c,
        "row5-submit",
        &b,
        &store,
        &[jobs.to_str().unwrap_or_default()],
    )?;
    let stored = fs::read_dir(store.join("jobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    let inner = fs::read_to_string(c.logs.join("row5-submit.stderr"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.split(" submitted in ")
                .nth(1)
                .and_then(|s| s.trim().trim_end_matches('s').parse::<f64>().ok())
        });
    let rate = n as f64 / e.wall_secs;
    let scale = 10_000.0 / n as f64;
    let quick = if c.o.quick { " (quick)" } else { "" };
    r.row(
        "5",
        format!("fleet submit, {n} jobs, confirms, dir store{quick}"),
        format!("{:.0} jobs/s ({:.2} s)", rate, e.wall_secs),
        "",
        "",
        "10,000 in < 10 s",
        verdict(e.wall_secs * scale < 10.0),
    );
    r.note(
        "5",
        format!(
            "process wall incl. start-up and parse; store + publish + batch record alone {}; {stored} job records stored; {}",
            inner.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "n/a".into()),
            b.note()
        ),
    );
    r.raw(
        "row5_submit",
        json!({"jobs": n, "wall_secs": e.wall_secs, "jobs_per_sec": rate, "inner_secs": inner,
               "peak_rss_kib": e.hwm_kib, "cpu_secs": e.cpu_secs, "stored": stored}),
    );
    Ok(())
}

fn row5_latency(c: &Ctx, r: &mut Report) -> Result<()> {
    let n = if c.o.quick { 8 } else { 20 };
    progress!("row 5: enqueue-to-start latency, {n} jobs one at a time to an idle worker");
    let d = c.dir("row5-latency")?;
    let b = Broker::open(&c.o.queue, "latency")?;
    let store = d.join("store");
    let (_mock, url) = start_mock(c, "row5-mock")?;
    let mut w = start_worker(c, "row5-worker", &b, &store, &url, 4, &[], &[])?;
    nap(Duration::from_secs(1))?;
    let mut lat = Vec::new();
    for i in 0..n {
        let id = format!("lat-{i:02}");
        submit(
            c,
            &format!("row5-submit-{i:02}"),
            &b,
            &store,
            &[
                "--task",
                "benchmark latency job",
                "--model",
                "finish1",
                "--id",
                &id,
            ],
        )?;
        let status = store.join("jobs").join(&id).join("status.json");
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = read_json(&status)
                && !matches!(
                    s["state"].as_str(),
                    Some("queued" | "running" | "retrying") | None
                )
            {
                break;
            }
            if Instant::now() > end {
                bail!("job {id} did not finish within 120 s");
            }
            if w.poll()?.is_some() {
                bail!("the worker exited: {}", w.stderr_tail());
            }
            nap(Duration::from_millis(50))?;
        }
        nap(Duration::from_millis(500))?;
    }
    let werr = stop_worker(&mut w);
    let recs = read_store(&store, false)?;
    for j in &recs {
        if let (Some(q), Some(s)) = (j.at("queued"), j.at("running")) {
            lat.push(s - q);
        }
    }
    let (p50, p95) = (percentile(&lat, 50.0), percentile(&lat, 95.0));
    r.row(
        "5",
        format!("enqueue → start, {n} single submits, idle worker"),
        format!("p50 {} / p95 {}", ms(p50), ms(p95)),
        "",
        "",
        "p50 < 50 ms",
        verdict(p50 < 0.050),
    );
    r.note(
        "5",
        format!(
            "status.json history queued → running, a job submitted after the previous one ended; max {}; outcomes: {}; worker peak RSS {}; {}",
            ms(percentile(&lat, 100.0)),
            outcomes(&recs),
            werr.map(|e| mib(e.hwm_kib))
                .unwrap_or_else(|| "n/a".into()),
            b.note()
        ),
    );
    r.raw(
        "row5_latency",
        json!({"jobs": n, "latency_secs": lat, "p50_secs": p50, "p95_secs": p95, "outcomes": outcomes(&recs)}),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Rows 6 and 8 (batches through two workers), and their helpers

#[path = "fleet/apicount.rs"]
mod apicount;
#[path = "fleet/batch.rs"]
mod batch;
#[path = "fleet/cpustat.rs"]
mod cpustat;

// ---------------------------------------------------------------------------
// Row 7: side by side with the OpenHands SDK

/// The SDK baseline's reference figures (its RESULTS.md, run 2).
const OH_REF_STEP_MS: f64 = 190.6;
const OH_REF_SUBPROCESS_MS: f64 = 75.5;
const OH_REF_START_S: f64 = 5.36;
const OH_REF_RSS_MIB: f64 = 279.0;

struct OhFigures {
    step_ms: f64,
    subprocess_ms: f64,
    start_s: f64,
    rss_mib: f64,
    source: String,
    /// Run here (not the reference figures).
    measured: bool,
}

fn python312() -> Option<String> {
    let mut cands: Vec<String> = vec!["python3.13".into(), "python3.12".into()];
    let root = Command::new("pyenv")
        .arg("root")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.pyenv")));
    if let Some(root) = root
        && let Ok(rd) = fs::read_dir(format!("{root}/versions"))
    {
        let mut vs: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/python3").to_string_lossy().into_owned())
            .collect();
        vs.sort();
        cands.extend(vs);
    }
    cands.into_iter().find(|c| {
        Command::new(c)
            .args([
                "-c",
                "import sys; sys.exit(0 if sys.version_info >= (3,12) else 1)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

fn openhands_run(c: &Ctx, reps: usize) -> Result<OhFigures> {
    let script = &c.o.openhands;
    let out = c.dir("openhands")?;
    progress!(
        "row 7: running the OpenHands SDK baseline ({}; installs the SDK into a venv on first use)",
        script.display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("REPS", reps.to_string())
        .env("ONLY", "single_N20,single_N100,N100_subprocess_terminal")
        .env("OUT", &out);
    let mut p = Proc::spawn("openhands", &mut cmd, &c.logs)?;
    let e = p.wait(Duration::from_secs(3600))?;
    if e.code != 0 {
        bail!("run.sh exited {}: {}", e.code, p.stderr_tail());
    }
    let s = read_json(&out.join("summary.json"))
        .ok_or_else(|| anyhow!("run.sh wrote no summary.json"))?;
    let col = |name: &str, key: &str| -> Vec<f64> {
        s[name]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r[key].as_f64())
            .collect()
    };
    let (w20, w100) = (
        median(&col("single_N20", "run_wall_s")),
        median(&col("single_N100", "run_wall_s")),
    );
    let (c20, c100) = (
        median(&col("single_N20", "llm_requests")),
        median(&col("single_N100", "llm_requests")),
    );
    let step_ms = (w100 - w20) * 1000.0 / (c100 - c20);
    let mut starts = col("single_N20", "start_to_first_llm_s");
    starts.extend(col("single_N100", "start_to_first_llm_s"));
    let mut rss = col("single_N20", "maxrss_kib");
    rss.extend(col("single_N100", "maxrss_kib"));
    if !step_ms.is_finite() {
        bail!("run.sh's summary lacks the N20/N100 runs");
    }
    Ok(OhFigures {
        step_ms,
        subprocess_ms: median(&col("N100_subprocess_terminal", "ms_per_llm_call")),
        start_s: median(&starts),
        rss_mib: median(&rss) / 1024.0,
        source: format!(
            "measured in this run ({reps} rep(s) each, medians); RESULTS.md's reference figures in brackets"
        ),
        measured: true,
    })
}

/// One fleet run of row 7: agent seconds, steps, launch → first reply seconds,
/// peak RSS KiB, CPU seconds.
type RunFigures = (f64, f64, f64, u64, f64);

fn row7(c: &Ctx, r: &mut Report) -> Result<()> {
    let reps = if c.o.quick { 1 } else { 3 };
    // The SDK baseline's trajectories are `echo step-i` N times, then finish: N + 1
    // LLM calls. Here N + 1 `echo step-i` calls, ended by max_iterations (a
    // scripted finish is not reached past ~40 steps: see `Ctx::script_loop`).
    let steps: Vec<Value> = (0..=100)
        .map(|i| terminal(&format!("echo step-{i}")))
        .collect();
    let s = json!({"steps": steps, "repeat_last": true,
                   "usage": {"prompt_tokens": 1000, "completion_tokens": 50}});
    fs::write(
        c.scripts.join("oh-echo.json"),
        serde_json::to_vec_pretty(&s)?,
    )?;
    let oh_job = |n: usize| {
        json!({"id": format!("oh-n{n}"), "llm": {"model": "oh-echo"},
               "limits": {"max_iterations": n + 1},
               "stuck": {"action_observation": 1000, "action_error": 1000,
                         "monologue": 1000, "alternating_pattern": 1000}})
    };
    progress!(
        "row 7: fleet run --workspace local, N=20 and N=100 trajectories, {reps} rep(s) each"
    );
    let mut fl: BTreeMap<usize, Vec<RunFigures>> = BTreeMap::new();
    // Warm-up, not recorded.
    {
        let d = c.dir("row7-warmup")?;
        let jobs = c.job_file_values(&d, vec![oh_job(20)], json!({}))?;
        c.fleet_run(
            "row7-warmup",
            &jobs,
            &d.join("store"),
            1,
            "local",
            Duration::from_secs(300),
        )?;
    }
    let mut outcomes_all = Vec::new();
    for rep in 0..reps {
        for n in [20usize, 100] {
            let d = c.dir(&format!("row7-n{n}-{rep}"))?;
            let jobs = c.job_file_values(&d, vec![oh_job(n)], json!({}))?;
            let store = d.join("store");
            let t_launch = now_epoch();
            let e = c.fleet_run(
                &format!("row7-n{n}-{rep}"),
                &jobs,
                &store,
                1,
                "local",
                Duration::from_secs(600),
            )?;
            let recs = read_store(&store, true)?;
            let j = recs.first().ok_or_else(|| anyhow!("no job in the store"))?;
            outcomes_all.push(j.outcome.clone());
            // The first ActionEvent is stamped when the first LLM reply is in: an
            // upper bound of launch → first request (the scripted reply takes ~1 ms).
            let first = j.first_ts("ActionEvent").unwrap_or(f64::NAN) - t_launch;
            fl.entry(n).or_default().push((
                j.phase("agent"),
                j.steps,
                first,
                e.hwm_kib,
                e.cpu_secs,
            ));
        }
    }
    let med = |n: usize, f: &dyn Fn(&RunFigures) -> f64| -> f64 {
        median(
            &fl.get(&n)
                .map(|v| v.iter().map(f).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let f_step_ms = (med(100, &|t| t.0) - med(20, &|t| t.0)) * 1000.0
        / (med(100, &|t| t.1) - med(20, &|t| t.1));
    let f_call_ms = med(100, &|t| t.0) * 1000.0 / med(100, &|t| t.1);
    let all: Vec<&RunFigures> = fl.values().flatten().collect();
    let f_start = median(&all.iter().map(|t| t.2).collect::<Vec<_>>());
    let f_rss_mib = median(&all.iter().map(|t| t.3 as f64).collect::<Vec<_>>()) / 1024.0;

    let reference = |why: String| OhFigures {
        step_ms: OH_REF_STEP_MS,
        subprocess_ms: OH_REF_SUBPROCESS_MS,
        start_s: OH_REF_START_S,
        rss_mib: OH_REF_RSS_MIB,
        source: format!(
            "reference figures quoted from its RESULTS.md (2 cores, 23 GiB), not run here: {why}"
        ),
        measured: false,
    };
    let oh = if c.o.no_openhands {
        reference("--no-openhands".into())
    } else if !c.o.openhands.is_file() {
        reference(format!("{} not found", c.o.openhands.display()))
    } else if python312().is_none() {
        reference("no Python ≥ 3.12 on this machine".into())
    } else {
        match openhands_run(c, reps) {
            Ok(f) => f,
            Err(e) => {
                check_interrupt()?;
                reference(format!("its run failed: {e:#}"))
            }
        }
    };
    let refd = |reference: &str| {
        if oh.measured {
            format!(" [{reference}]")
        } else {
            String::new()
        }
    };
    let rt_step = ratio(f_step_ms, oh.step_ms);
    let rt_start = ratio(f_start, oh.start_s);
    let rt_rss = ratio(f_rss_mib, oh.rss_mib);
    r.row(
        "7",
        "vs OpenHands SDK: marginal wall per step (N=100 vs N=20)",
        format!("{f_step_ms:.1} ms"),
        format!(
            "SDK (tmux terminal): {:.1} ms{}",
            oh.step_ms,
            refd(&format!("{OH_REF_STEP_MS:.1} ms"))
        ),
        x(rt_step),
        "",
        Verdict::Info,
    );
    r.row(
        "7",
        "vs OpenHands SDK: launch → first LLM request",
        format!("{} (≤, to 1st reply)", ms(f_start)),
        format!(
            "SDK: {:.2} s{}",
            oh.start_s,
            refd(&format!("{OH_REF_START_S:.2} s"))
        ),
        x(rt_start),
        "",
        Verdict::Info,
    );
    r.row(
        "7",
        "vs OpenHands SDK: peak RSS, one conversation",
        format!("{f_rss_mib:.1} MiB"),
        format!("SDK: {:.0} MiB{}", oh.rss_mib, refd("278–280 MiB")),
        x(rt_rss),
        "",
        Verdict::Info,
    );
    r.note(
        "7",
        format!(
            "fleet: {f_call_ms:.1} ms per LLM call over N=100 (its context is condensed past 80 events; the SDK's is not); SDK with its subprocess terminal: {:.1} ms per call{}; fleet outcomes: {}",
            oh.subprocess_ms,
            refd(&format!("{OH_REF_SUBPROCESS_MS:.1}")),
            count_strs(&outcomes_all)
        ),
    );
    r.note("7", format!("SDK figures: {}", oh.source));
    r.raw(
        "row7_openhands",
        json!({
            "fleet": {"marginal_step_ms": f_step_ms, "ms_per_call_n100": f_call_ms,
                      "launch_to_first_reply_s": f_start, "peak_rss_mib": f_rss_mib,
                      "runs": fl.iter().map(|(n, v)| (n.to_string(), v.iter().map(|t| json!({
                          "agent_secs": t.0, "steps": t.1, "launch_to_first_reply_s": t.2,
                          "peak_rss_kib": t.3, "cpu_secs": t.4})).collect::<Vec<_>>())).collect::<BTreeMap<_, _>>()},
            "openhands": {"marginal_step_ms": oh.step_ms, "subprocess_ms_per_call": oh.subprocess_ms,
                          "launch_to_first_llm_s": oh.start_s, "peak_rss_mib": oh.rss_mib, "source": oh.source},
            "ratios_fleet_over_sdk": {"step": rt_step, "start": rt_start, "rss": rt_rss},
        }),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Machine and main

fn machine() -> (String, Value) {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let docker_v = docker(&["version", "--format", "{{.Server.Version}}"])
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unreachable".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let text = format!(
        "{nproc} cores (nproc), {:.1} GiB memory (MemTotal), {cpu}, Linux {kernel}, Docker {docker_v}",
        mem_kib as f64 / 1024.0 / 1024.0
    );
    (
        text,
        json!({"nproc": nproc, "mem_total_kib": mem_kib, "cpu": cpu, "kernel": kernel, "docker": docker_v}),
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fleet_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    install_signal_handlers();
    // `cargo test --bench fleet` starts this with no arguments (`cargo bench`
    // always adds `--bench`): check the helpers rather than run the benchmark.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--self-test") {
        match apicount::self_test().and_then(|()| self_test()) {
            Ok(()) => {
                println!(
                    "self-test: ok (Docker API proxy: path templates, request parser, forwarding; metrics.json docker_api_calls)"
                );
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("self-test failed: {e:#}");
                std::process::exit(1);
            }
        }
    }
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    };
    match run(o) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) {
                130
            } else {
                1
            });
        }
    }
}

/// Checks of this file's helpers (with `apicount::self_test`, see `main`).
fn self_test() -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("fleet-bench-test-")
        .tempdir()?;
    let store = tmp.path();
    let calls = |total: u32| {
        json!({"phases_secs": {"agent": 0.5},
               "docker_api_calls": {"workspace_start": 4, "input": 1, "agent": 4,
                                    "collect": 3, "teardown": 1, "total": total, "other": 2}})
    };
    for (id, m) in [
        ("a", calls(13)),
        ("b", calls(14)),
        ("c", json!({"phases_secs": {"agent": 0.5}})),
    ] {
        let d = store.join("jobs").join(id);
        fs::create_dir_all(&d)?;
        fs::write(d.join("metrics.json"), serde_json::to_vec(&m)?)?;
    }
    let recs = read_store(store, false)?;
    let got = api_calls_text(&api_call_medians(&recs));
    let want =
        "workspace_start 4 · input 1 · agent 4 · collect 3 · teardown 1 · total 13.5 · other 2";
    if got != want {
        bail!("docker_api_calls medians: got {got:?}, want {want:?}");
    }
    let without: Vec<JobRec> = recs.into_iter().filter(|j| j.id == "c").collect();
    let got = api_calls_text(&api_call_medians(&without));
    if !got.starts_with("n/a") {
        bail!("docker_api_calls absent: got {got:?}, want n/a");
    }
    if api_medians_json(&api_call_medians(&without)) != Value::Null {
        bail!("docker_api_calls absent: JSON not null");
    }
    Ok(())
}

/// A row of the table: measures and appends its lines.
type RowFn = fn(&Ctx, &mut Report) -> Result<()>;

fn run(o: Opts) -> Result<()> {
    if !o.fleet.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --locked --bin fleet) or pass --fleet",
            o.fleet.display()
        );
    }
    let o = Opts {
        fleet: fs::canonicalize(&o.fleet)?,
        ..o
    };
    let tmp = tempfile::Builder::new().prefix("fleet-bench-").tempdir()?;
    let work = tmp.path().to_path_buf();
    let logs = work.join("logs");
    let scripts = work.join("mock-llm");
    fs::create_dir_all(&logs)?;
    fs::create_dir_all(&scripts)?;
    let c = Ctx {
        o: o.clone(),
        work: work.clone(),
        logs,
        scripts,
        seq: AtomicUsize::new(0),
    };
    let (mtext, mraw) = machine();
    let load0 = loadavg();
    let started = chrono::Utc::now();
    progress!("machine: {mtext}");
    progress!("work directory: {}", work.display());
    let mut r = Report::default();
    let rows: [(u32, &str, RowFn); 8] = [
        (1, "per-job overhead", row1),
        (2, "per-step overhead", row2),
        (3, "file_editor round trip", row3),
        (4, "concurrent slow jobs", row4),
        (5, "submit throughput and latency", row5),
        (6, "batch through two workers", batch::row6),
        (7, "OpenHands SDK side by side", row7),
        (8, "local-workspace batch through two workers", batch::row8),
    ];
    for (n, name, f) in rows {
        if !o.only.contains(&n) {
            continue;
        }
        let t = Instant::now();
        if let Err(e) = f(&c, &mut r) {
            check_interrupt()?;
            progress!("row {n} failed: {e:#}");
            r.not_measured(&n.to_string(), name, format!("{e:#}"));
        }
        progress!("row {n} done in {:.0} s", t.elapsed().as_secs_f64());
    }
    // Nothing this run started may be left: a fleet container would carry our binary's
    // labels, so a count of them is a check worth printing.
    let load1 = loadavg();
    let mode = if o.quick {
        "quick run (--quick: smaller counts)"
    } else {
        "full run"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent-fleet benchmark: {mode}, {} UTC, {}",
        started.format("%Y-%m-%d %H:%M"),
        fleet_version(&o.fleet)
    );
    let _ = writeln!(out, "machine: {mtext}");
    let _ = writeln!(
        out,
        "load average (1/5/15 min) at start {load0}, at end {load1}. Every figure is from this run; on a shared machine they are noisy, ratios less so."
    );
    if o.quick {
        let _ = writeln!(
            out,
            "--quick: rows marked (quick) ran fewer jobs than the aims are stated for (200 / 50 concurrent, 10,000 submitted, 1,000 in each batch)."
        );
    }
    let _ = writeln!(out);
    out.push_str(&r.render());
    print!("{out}");
    std::io::stdout().flush()?;
    if let Some(path) = &o.json {
        let mut raw = serde_json::Map::new();
        raw.insert("machine".into(), mraw);
        raw.insert("mode".into(), json!(if o.quick { "quick" } else { "full" }));
        raw.insert("started_at".into(), json!(started.to_rfc3339()));
        raw.insert("load_start".into(), json!(load0));
        raw.insert("load_end".into(), json!(load1));
        raw.insert("rows".into(), Value::Object(r.raw.clone()));
        fs::write(path, serde_json::to_vec_pretty(&Value::Object(raw))?)?;
        progress!("raw numbers written to {}", path.display());
    }
    if o.keep {
        let kept = tmp.keep();
        progress!("work directory kept: {}", kept.display());
    }
    Ok(())
}
