//! Rows 6 and 8: batches of 3-step jobs through two workers and RabbitMQ.
//!
//! Row 6 runs them on Docker and sets them beside as many bare `docker run`s at
//! the same parallelism; then explains the two throughputs: CPU of the Docker
//! daemons and of the machine over each batch, the fleet's own CPU per job, and
//! Docker API calls per job, fleet vs bare, counted by the `apicount` proxy on a
//! small sample run after the timed batches (never under them: it adds latency).
//! Row 8 runs the same batch on the local workspace: the fleet's own ceiling
//! with Docker out of the way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::apicount::{self, ApiCounter, Counts, Tally};
use super::cpustat::{self, CpuDelta};
use super::{
    Broker, Ctx, Exit, JobRec, Report, Verdict, api_call_medians, api_calls_text, api_medians_json,
    check_interrupt, finish, mib, nap, now_epoch, outcomes, rabbit_skip, ratio, read_json,
    read_store, start_mock, start_worker, stop_worker, submit, terminal, time_docker, verdict, x,
};

const WORKERS: usize = 2;
const SLOTS: usize = 4;
/// Row 6's aims: throughput against bare containers, and each worker's peak RSS.
const AIM_RATIO: f64 = 0.9;
const AIM_RSS_MIB: f64 = 64.0;
const MODEL: &str = "steps3";

/// One batch as run.
struct Batch {
    n: usize,
    /// Before submit to the last terminal status.
    wall_secs: f64,
    per_min: f64,
    recs: Vec<JobRec>,
    workers: Vec<Option<Exit>>,
    mock: Option<Exit>,
    /// Over the same stretch as `wall_secs` (from just before submit).
    cpu: CpuDelta,
    /// Requests the proxy saw from just before submit to the last terminal status.
    api: Option<Tally>,
    broker: String,
}

impl Batch {
    fn worker_cpu_secs(&self) -> f64 {
        self.workers.iter().flatten().map(|e| e.cpu_secs).sum()
    }
    fn peak_rss_kib(&self) -> Option<u64> {
        self.workers.iter().flatten().map(|e| e.hwm_kib).max()
    }
    fn rss_list(&self) -> String {
        self.workers
            .iter()
            .map(|e| {
                e.as_ref()
                    .map(|e| mib(e.hwm_kib))
                    .unwrap_or_else(|| "n/a".into())
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

struct Spec<'a> {
    tag: &'a str,
    n: usize,
    workers: usize,
    workspace: &'a str,
    /// Counting proxy: the workers reach Docker through it and its counts are
    /// cleared just before submit.
    proxy: Option<&'a ApiCounter>,
}

/// `spec.n` 3-step jobs submitted at once to `spec.workers` fresh workers
/// (SLOTS each), to the end.
fn run_batch(c: &Ctx, spec: &Spec) -> Result<Batch> {
    let n = spec.n;
    c.script(MODEL, vec![terminal("true"), terminal("true"), finish()])?;
    let d = c.dir(spec.tag)?;
    let b = Broker::open(&c.o.queue, spec.tag)?;
    let store = d.join("store");
    let ids: Vec<(String, String)> = (0..n)
        .map(|i| (format!("b-{i:04}"), MODEL.into()))
        .collect();
    let jobs = c.job_file(&d, &ids, json!({}))?;
    let (mut mock, url) = start_mock(c, &format!("{}-mock", spec.tag))?;
    let mut env: Vec<(&str, String)> = Vec::new();
    if let Some(p) = spec.proxy {
        env.push(("DOCKER_HOST", p.url()));
    }
    let mut ws = Vec::new();
    for i in 0..spec.workers {
        ws.push(start_worker(
            c,
            &format!("{}-worker-{i}", spec.tag),
            &b,
            &store,
            &url,
            SLOTS,
            &["--workspace", spec.workspace],
            &env,
        )?);
    }
    nap(Duration::from_secs(1))?;
    let counts: Option<Counts> = spec.proxy.map(ApiCounter::counts);
    if let Some(k) = &counts {
        k.reset();
    }
    let cpu0 = cpustat::sample();
    let t0 = now_epoch();
    submit(
        c,
        &format!("{}-submit", spec.tag),
        &b,
        &store,
        &[jobs.to_str().unwrap_or_default()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60 + 10 * n as u64);
    let mut last_report = Instant::now();
    loop {
        let done = count_terminal(&store);
        if done >= n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            progress!("{}: {done}/{n} jobs done", spec.tag);
            last_report = Instant::now();
        }
        if Instant::now() > deadline {
            bail!("the batch did not finish in time ({done}/{n})");
        }
        for w in &mut ws {
            if w.poll()?.is_some() {
                bail!("{} exited: {}", w.name, w.stderr_tail());
            }
        }
        nap(Duration::from_millis(500))?;
    }
    let cpu = cpu0.delta(&cpustat::sample());
    let api = counts.map(|k| k.snapshot());
    let workers: Vec<Option<Exit>> = ws.iter_mut().map(stop_worker).collect();
    mock.stop();
    let recs = read_store(&store, false)?;
    let t_end = recs
        .iter()
        .filter_map(JobRec::terminal_at)
        .fold(f64::NAN, f64::max);
    let wall_secs = t_end - t0;
    Ok(Batch {
        n,
        wall_secs,
        per_min: n as f64 / wall_secs * 60.0,
        recs,
        workers,
        mock: mock.exit.clone(),
        cpu,
        api,
        broker: b.note(),
    })
}

pub(super) fn count_terminal(store: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(store.join("jobs")) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            read_json(&e.path().join("status.json"))
                .map(|s| {
                    !matches!(
                        s["state"].as_str(),
                        Some("queued" | "running" | "retrying") | None
                    )
                })
                .unwrap_or(false)
        })
        .count()
}

/// `n` × `docker [-H HOST] run --rm --network none IMAGE true`, `par` at a time;
/// returns the wall seconds and the CPU over them.
fn bare_batch(c: &Ctx, n: usize, par: usize, host: Option<&str>) -> Result<(f64, CpuDelta)> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(h) = host {
        args.extend(["-H", h]);
    }
    args.extend([
        "run",
        "--rm",
        "--network",
        "none",
        c.o.image.as_str(),
        "true",
    ]);
    let next = AtomicUsize::new(0);
    let errs = Mutex::new(Vec::<String>::new());
    let cpu0 = cpustat::sample();
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..par.min(n) {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    if let Err(e) = time_docker(&args) {
                        errs.lock().unwrap().push(format!("{e:#}"));
                        return;
                    }
                }
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu0.delta(&cpustat::sample());
    check_interrupt()?;
    if let Some(e) = errs.lock().unwrap().first() {
        bail!("bare docker runs: {e}");
    }
    Ok((wall, cpu))
}

/// "1.5 s (12.0 ms/job)".
fn secs_per_job(secs: f64, n: usize) -> String {
    if !secs.is_finite() {
        return "n/a".into();
    }
    format!("{secs:.1} s ({:.1} ms/job)", secs * 1000.0 / n as f64)
}

/// "93.3 s (933.3 ms/job, 100% of the cores' time)".
fn machine_text(d: &CpuDelta, n: usize) -> String {
    let share = ratio(d.machine_busy_secs, d.machine_all_secs) * 100.0;
    if !share.is_finite() {
        return "n/a (/proc/stat unreadable)".into();
    }
    format!(
        "{:.1} s ({:.1} ms/job, {share:.0}% of the cores' time)",
        d.machine_busy_secs,
        d.machine_busy_secs * 1000.0 / n as f64
    )
}

fn cpu_json(d: &CpuDelta, n: usize) -> Value {
    json!({"wall_secs": d.wall_secs, "daemons_cpu_secs": d.daemons,
           "daemons_cpu_secs_total": d.daemon_secs(),
           "daemons_cpu_secs_per_job": d.daemon_secs() / n as f64,
           "machine_busy_cpu_secs": d.machine_busy_secs,
           "machine_all_cpu_secs": d.machine_all_secs,
           "machine_busy_cpu_secs_per_job": d.machine_busy_secs / n as f64})
}

fn daemons_text(d: &CpuDelta, n: usize) -> String {
    if d.daemons.is_empty() {
        return format!("n/a (no {} visible in /proc)", cpustat::DAEMONS.join("/"));
    }
    let parts: Vec<String> = d
        .daemons
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect();
    format!(
        "{} ({})",
        secs_per_job(d.daemon_secs(), n),
        parts.join(" + ")
    )
}

/// The fleet's CPU per job: its workers (reaped children included) and, apart,
/// the scripted LLM.
fn fleet_cpu_text(b: &Batch, workers_incl: &str) -> String {
    format!(
        "workers {:.1} ms/job ({:.1} s over {}{workers_incl}), scripted LLM {}",
        b.worker_cpu_secs() * 1000.0 / b.n as f64,
        b.worker_cpu_secs(),
        b.workers.len(),
        b.mock
            .as_ref()
            .map(|e| format!("{:.1} ms/job", e.cpu_secs * 1000.0 / b.n as f64))
            .unwrap_or_else(|| "n/a".into())
    )
}

fn batch_json(b: &Batch) -> Value {
    json!({"jobs": b.n, "workers": b.workers.len(), "concurrency": SLOTS,
           "wall_secs": b.wall_secs, "jobs_per_min": b.per_min, "outcomes": outcomes(&b.recs),
           "workers_cpu_secs": b.worker_cpu_secs(),
           "workers_cpu_secs_per_job": b.worker_cpu_secs() / b.n as f64,
           "workers_peak_rss_kib": b.workers.iter().map(|e| e.as_ref().map(|e| e.hwm_kib)).collect::<Vec<_>>(),
           "mock_llm_cpu_secs": b.mock.as_ref().map(|e| e.cpu_secs),
           "cpu": cpu_json(&b.cpu, b.n),
           "docker_api_calls_metrics_medians": api_medians_json(&api_call_medians(&b.recs))})
}

// ---------------------------------------------------------------------------
// Row 6

pub(super) fn row6(c: &Ctx, r: &mut Report) -> Result<()> {
    let n = if c.o.quick { 100 } else { 1000 };
    let sample_n = if c.o.quick { 10 } else { 20 };
    let par = WORKERS * SLOTS;
    let quick = if c.o.quick { " (quick)" } else { "" };
    let measure = format!("{n} jobs via {WORKERS} workers × {SLOTS} slots, Docker, 3 steps{quick}");
    if let Some(why) = rabbit_skip(c) {
        r.not_measured("6", &measure, why);
        return Ok(());
    }
    progress!(
        "row 6: {n} jobs through {WORKERS} workers, then {n} bare docker runs with {par} in parallel"
    );
    let fleet = run_batch(
        c,
        &Spec {
            tag: "row6",
            n,
            workers: WORKERS,
            workspace: "docker",
            proxy: None,
        },
    )?;
    let (bare_wall, bare_cpu) = bare_batch(c, n, par, None)?;
    let bare_rate = n as f64 / bare_wall * 60.0;
    let rt = ratio(fleet.per_min, bare_rate);
    r.row(
        "6",
        &measure,
        format!("{:.0} jobs/min ({:.1} s)", fleet.per_min, fleet.wall_secs),
        format!(
            "{n} × docker run --rm true, {par} at a time: {bare_rate:.0} /min ({bare_wall:.1} s)"
        ),
        x(rt),
        format!("≥ {AIM_RATIO}×"),
        verdict(rt >= AIM_RATIO),
    );
    let peak = fleet.peak_rss_kib();
    r.row(
        "6",
        "  worker peak RSS (the larger of the two), same batch",
        peak.map(mib).unwrap_or_else(|| "n/a".into()),
        "",
        "",
        format!("< {AIM_RSS_MIB:.0} MiB"),
        match peak {
            Some(k) => verdict((k as f64 / 1024.0) < AIM_RSS_MIB),
            None => Verdict::NotMeasured,
        },
    );
    r.note(
        "6",
        format!(
            "from before submit to the last terminal status; outcomes: {}; worker peak RSS {}; {}",
            outcomes(&fleet.recs),
            fleet.rss_list(),
            fleet.broker
        ),
    );
    r.note("6", format!("fleet CPU: {}", fleet_cpu_text(&fleet, "")));
    r.note(
        "6",
        format!(
            "Docker daemons' CPU (dockerd + containerd, utime+stime+children): fleet batch {} vs bare batch {}",
            daemons_text(&fleet.cpu, n),
            daemons_text(&bare_cpu, n)
        ),
    );
    r.note(
        "6",
        format!(
            "machine busy CPU (/proc/stat, all cores; shims, containers, this harness and anything else running included): fleet batch {} vs bare batch {}",
            machine_text(&fleet.cpu, n),
            machine_text(&bare_cpu, n)
        ),
    );
    let own = api_call_medians(&fleet.recs);
    r.note(
        "6",
        format!(
            "fleet's own Docker API count (metrics.json docker_api_calls, median per job): {}",
            api_calls_text(&own)
        ),
    );

    // The proxy sample, after the timed batches.
    let api = match api_sample(c, sample_n, par) {
        Ok(a) => Some(a),
        Err(e) => {
            check_interrupt()?;
            r.note(
                "6",
                format!("Docker API calls per job (proxy): not measured: {e:#}"),
            );
            None
        }
    };
    if let Some(a) = &api {
        api_notes(r, a);
    }
    let mut raw = batch_json(&fleet);
    raw["bare_wall_secs"] = json!(bare_wall);
    raw["bare_jobs_per_min"] = json!(bare_rate);
    raw["bare_cpu"] = cpu_json(&bare_cpu, n);
    raw["ratio"] = json!(rt);
    raw["aims"] = json!({"ratio_at_least": AIM_RATIO, "worker_peak_rss_mib_below": AIM_RSS_MIB});
    raw["fleet_jobs_per_min"] = json!(fleet.per_min);
    raw["fleet_wall_secs"] = json!(fleet.wall_secs);
    raw["docker_api_sample"] = api.as_ref().map(ApiSample::json).unwrap_or(Value::Null);
    r.raw("row6_batch", raw);
    Ok(())
}

/// Docker API calls of `n` fleet jobs (one worker, SLOTS slots) and of `n` bare
/// `docker run`s, both through the counting proxy.
struct ApiSample {
    n: usize,
    fleet: Tally,
    bare: Tally,
    /// Sum over the sample's jobs of metrics.json's docker_api_calls.total.
    fleet_own_total: Option<f64>,
    outcomes: String,
}

impl ApiSample {
    fn per_job(&self, t: &Tally) -> f64 {
        t.total() as f64 / self.n as f64
    }

    fn json(&self) -> Value {
        let per = |t: &Tally| -> BTreeMap<String, f64> {
            t.by_endpoint
                .iter()
                .map(|(k, v)| (k.clone(), *v as f64 / self.n as f64))
                .collect()
        };
        json!({"jobs": self.n,
               "fleet": {"calls_per_job": self.per_job(&self.fleet), "by_endpoint_per_job": per(&self.fleet),
                         "connections": self.fleet.connections, "upgrades": self.fleet.upgrades,
                         "metrics_json_total_per_job": self.fleet_own_total.map(|t| t / self.n as f64),
                         "outcomes": self.outcomes},
               "bare": {"calls_per_job": self.per_job(&self.bare), "by_endpoint_per_job": per(&self.bare),
                        "connections": self.bare.connections, "upgrades": self.bare.upgrades}})
    }
}

fn api_sample(c: &Ctx, n: usize, par: usize) -> Result<ApiSample> {
    let upstream = apicount::engine_socket()?;
    let proxy = ApiCounter::start(&c.work.join("docker-api.sock"), &upstream)?;
    progress!(
        "row 6: Docker API sample through {}: {n} fleet jobs, {n} bare docker runs",
        proxy.url()
    );
    let fleet = run_batch(
        c,
        &Spec {
            tag: "row6-api",
            n,
            workers: 1,
            workspace: "docker",
            proxy: Some(&proxy),
        },
    )?;
    let fleet_tally = fleet.api.clone().unwrap_or_default();
    let counts = proxy.counts();
    counts.reset();
    bare_batch(c, n, par, Some(&proxy.url()))?;
    let bare = counts.snapshot();
    let totals: Vec<f64> = fleet
        .recs
        .iter()
        .filter_map(|j| j.api_calls.get("total").copied())
        .collect();
    Ok(ApiSample {
        n,
        fleet: fleet_tally,
        bare,
        fleet_own_total: (totals.len() == fleet.recs.len() && !totals.is_empty())
            .then(|| totals.iter().sum()),
        outcomes: outcomes(&fleet.recs),
    })
}

fn per(v: u64, n: usize) -> String {
    let p = v as f64 / n as f64;
    if p == p.round() {
        format!("{p:.0}")
    } else {
        format!("{p:.2}")
    }
}

fn api_notes(r: &mut Report, a: &ApiSample) {
    let n = a.n;
    r.note(
        "6",
        format!(
            "Docker API calls per job, counted by a proxy on the engine socket ({n} jobs after the timed batches; outcomes: {}): fleet {} vs bare docker run {} (connections per job {} vs {}; upgraded {} vs {}); fleet's own metrics.json total {}",
            a.outcomes,
            per(a.fleet.total(), n),
            per(a.bare.total(), n),
            per(a.fleet.connections, n),
            per(a.bare.connections, n),
            per(a.fleet.upgrades, n),
            per(a.bare.upgrades, n),
            a.fleet_own_total
                .map(|t| format!("{:.2}", t / n as f64))
                .unwrap_or_else(|| "n/a".into()),
        ),
    );
    let keys: BTreeSet<&String> = a
        .fleet
        .by_endpoint
        .keys()
        .chain(a.bare.by_endpoint.keys())
        .collect();
    let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    r.note(
        "6",
        format!(
            "{:<width$}  {:>6}  {:>6}",
            "per job, by endpoint", "fleet", "bare"
        ),
    );
    for k in keys {
        let f = a.fleet.by_endpoint.get(k).copied().unwrap_or(0);
        let b = a.bare.by_endpoint.get(k).copied().unwrap_or(0);
        r.note(
            "6",
            format!("{k:<width$}  {:>6}  {:>6}", per(f, n), per(b, n)),
        );
    }
}

// ---------------------------------------------------------------------------
// Row 8

pub(super) fn row8(c: &Ctx, r: &mut Report) -> Result<()> {
    let n = if c.o.quick { 100 } else { 1000 };
    let quick = if c.o.quick { " (quick)" } else { "" };
    let measure =
        format!("{n} jobs via {WORKERS} workers × {SLOTS} slots, local workspace, 3 steps{quick}");
    if let Some(why) = rabbit_skip(c) {
        r.not_measured("8", &measure, why);
        return Ok(());
    }
    progress!("row 8: {n} jobs through {WORKERS} workers on the local workspace");
    let b = run_batch(
        c,
        &Spec {
            tag: "row8",
            n,
            workers: WORKERS,
            workspace: "local",
            proxy: None,
        },
    )?;
    // Row 6's bare Docker figure, when row 6 ran in this run.
    let bare6 = r
        .raw
        .get("row6_batch")
        .and_then(|v| v["bare_jobs_per_min"].as_f64());
    let (baseline, rt) = match bare6 {
        Some(bare) => (
            format!("row 6's bare docker run: {bare:.0} /min"),
            x(ratio(b.per_min, bare)),
        ),
        None => (String::new(), String::new()),
    };
    r.row(
        "8",
        measure,
        format!("{:.0} jobs/min ({:.1} s)", b.per_min, b.wall_secs),
        baseline,
        rt,
        "",
        Verdict::Info,
    );
    r.note(
        "8",
        format!(
            "from before submit to the last terminal status; outcomes: {}; worker peak RSS {}; {}",
            outcomes(&b.recs),
            b.rss_list(),
            b.broker
        ),
    );
    r.note(
        "8",
        format!(
            "fleet CPU: {}; machine busy CPU {}; Docker daemons {}",
            fleet_cpu_text(&b, ", their step commands included"),
            machine_text(&b.cpu, n),
            daemons_text(&b.cpu, n)
        ),
    );
    let mut raw = batch_json(&b);
    raw["row6_bare_jobs_per_min"] = json!(bare6);
    r.raw("row8_local_batch", raw);
    Ok(())
}
