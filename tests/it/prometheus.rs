//! The metrics endpoint, and deploy/ checked against a real Prometheus (Debian's
//! `prometheus`, installed by scripts/services/prometheus.sh): every expression of
//! the Grafana dashboard and of the recording and alerting rules is evaluated
//! through Prometheus's HTTP API and must return data. Also `promtool check` on
//! deploy/prometheus and `docker-compose config` on deploy/docker-compose.yml.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_fleet::job::{self, JobResult, Outcome, Tokens};
use agent_fleet::results::webhook::{self, Notifier, WebhookSettings};
use agent_fleet::store::Store;
use agent_fleet::telemetry::metrics;
use agent_fleet::telemetry::server::{self, Readiness};
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Every series name of DESIGN.md "Metrics" (histograms by their base name).
const DESIGN_METRICS: &[&str] = &[
    "fleet_jobs_started_total",
    "fleet_jobs_finished_total",
    "fleet_job_duration_seconds",
    "fleet_job_queue_wait_seconds",
    "fleet_jobs_running",
    "fleet_worker_slots",
    "fleet_agent_steps_total",
    "fleet_llm_requests_total",
    "fleet_llm_request_duration_seconds",
    "fleet_llm_tokens_total",
    "fleet_llm_cost_usd_total",
    "fleet_llm_retries_total",
    "fleet_tool_calls_total",
    "fleet_stuck_detections_total",
    "fleet_workspace_start_seconds",
    "fleet_job_retries_total",
    "fleet_webhook_deliveries_total",
    "fleet_store_uploaded_bytes_total",
    "fleet_image_pull_seconds",
    "fleet_image_pulls_total",
];

/// How long an expression may take to return data once scrapes and rules ran.
const PATIENCE: Duration = Duration::from_secs(8);
/// Alerts are tried on the live scenario first; the two that need a dead worker
/// should not hold the test up for long there.
const ALERT_PATIENCE: Duration = Duration::from_secs(3);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Runs a tool to completion under a deadline; fails the test (never skips) when
/// it is missing or refuses.
async fn run_tool(program: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(repo()).kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(120), cmd.output()).await {
        Err(_) => panic!("{program} {args:?} did not finish within 120 s"),
        Ok(Err(e)) => {
            panic!("cannot run {program} ({e}); install it with scripts/services/prometheus.sh")
        }
        Ok(Ok(o)) => o,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[tokio::test]
async fn promtool_accepts_the_config_and_the_rules() {
    let out = run_tool(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
    )
    .await;
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = rule_files();
    assert!(
        !rules.is_empty(),
        "no rule files in deploy/prometheus/rules"
    );
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(|p| p.to_str().unwrap()));
    run_tool("promtool", &args).await;
}

#[tokio::test]
async fn the_compose_file_is_valid() {
    run_tool(
        "docker-compose",
        &["-f", "deploy/docker-compose.yml", "config", "-q"],
    )
    .await;
}

#[tokio::test]
async fn the_endpoint_serves_metrics_health_and_readiness() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path().to_str().unwrap())
        .await
        .unwrap();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = broken.clone();
    let readiness = Readiness::new()
        .check("store", move || {
            let s = store.clone();
            async move { s.ping().await }
        })
        .check("broker", move || {
            let b = b.clone();
            async move { !b.load(Ordering::SeqCst) }
        });
    let stop = CancellationToken::new();
    let srv = server::serve("127.0.0.1:0".parse().unwrap(), readiness, stop.clone())
        .await
        .expect("bind");
    let base = format!("http://{}", srv.local_addr());
    let c = http();

    let m = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = m.text().await.unwrap();
    for name in DESIGN_METRICS {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not exported"
        );
    }
    // Known label values are there from start-up, at zero.
    assert!(
        text.contains("fleet_jobs_finished_total{outcome=\"stuck\"} 0"),
        "{text}"
    );
    assert!(text.contains("fleet_webhook_deliveries_total{outcome=\"failed\"} 0"));
    for kind in ["cache_read", "cache_write"] {
        assert!(
            text.contains(&format!("fleet_llm_tokens_total{{kind=\"{kind}\"}}")),
            "{kind}: {text}"
        );
    }
    assert!(
        text.contains("fleet_image_pulls_total{outcome=\"auth\"} 0"),
        "{text}"
    );

    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["ready"], true);

    broken.store(true, Ordering::SeqCst);
    let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], json!(["broker"]));
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "alive though not ready"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), srv.stopped())
        .await
        .expect("stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn every_dashboard_and_rule_expression_returns_data_from_a_real_prometheus() {
    // The worker side: the metrics endpoint, and series moving as during a batch.
    let stop = CancellationToken::new();
    let srv = server::serve(
        "127.0.0.1:0".parse().unwrap(),
        Readiness::new(),
        stop.clone(),
    )
    .await
    .expect("bind");
    let traffic = tokio::spawn(drive_traffic(stop.clone()));

    // Scenario A scrapes the live worker: everything but the "no worker" alerts
    // must return data. Scenario B scrapes a dead target as the only worker: the
    // "no worker" alerts fire there.
    let live = Prometheus::start(srv.local_addr()).await;
    let dead_target = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dead = Prometheus::start(dead_target).await;
    live.wait_for_scrapes(5).await;
    dead.wait_for_scrapes(3).await;

    let rules = live.rules().await;
    let declared = declared_rule_count();
    assert_eq!(
        rules.len(),
        declared,
        "Prometheus loaded {} rules of the {declared} in the files",
        rules.len()
    );
    for r in &rules {
        assert_eq!(
            r.health, "ok",
            "rule {} is unhealthy: {}",
            r.name, r.last_error
        );
    }

    let dashboard = dashboard_expressions();
    assert!(
        dashboard.len() >= 20,
        "only {} dashboard expressions found",
        dashboard.len()
    );
    let mut missing = Vec::new();
    for expr in &dashboard {
        if !live.returns_data(expr, PATIENCE).await {
            missing.push(format!("dashboard: {expr}"));
        }
    }
    for r in rules.iter().filter(|r| r.kind == "recording") {
        for expr in [&r.query, &r.name] {
            if !live.returns_data(expr, PATIENCE).await {
                missing.push(format!("recording rule {}: {expr}", r.name));
            }
        }
    }
    let mut fired_on_dead = Vec::new();
    for r in rules.iter().filter(|r| r.kind == "alerting") {
        if live.returns_data(&r.query, ALERT_PATIENCE).await {
            continue;
        }
        if dead.returns_data(&r.query, PATIENCE).await {
            fired_on_dead.push(r.name.clone());
        } else {
            missing.push(format!("alert {}: {}", r.name, r.query));
        }
    }
    stop.cancel();
    traffic.await.unwrap();
    drop((live, dead));

    assert!(
        missing.is_empty(),
        "expressions without data:\n{}",
        missing.join("\n")
    );
    fired_on_dead.sort();
    assert_eq!(
        fired_on_dead,
        ["FleetNoWorkerUp", "FleetWorkerDown"],
        "alerts that only fire without a live worker"
    );
}

/// Moves every series the way a busy worker does: jobs finishing with mixed
/// outcomes, LLM traffic, a growing backlog, dead letters, and webhook deliveries
/// (delivered, retried, failed) through the real notifier and a real receiver.
async fn drive_traffic(stop: CancellationToken) {
    let receiver = start_receiver().await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path().to_str().unwrap())
        .await
        .unwrap();
    let settings = WebhookSettings {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        allow_private: true,
        ..WebhookSettings::new(None, "FLEET_TEST_PROM_UNSET")
    };
    let notifier = Notifier::new(webhook::http_client().unwrap(), store.clone(), settings);
    let m = metrics();
    m.worker_slots.set(4);
    m.queue_messages.with_label_values(&["fleet.dead"]).set(2.0);
    m.queue_consumers
        .with_label_values(&["fleet.jobs"])
        .set(2.0);
    let mut tick = 0u64;
    while !stop.is_cancelled() {
        tick += 1;
        m.jobs_started.inc();
        m.jobs_running.set((tick % 2) as i64);
        m.queue_wait.observe(0.5 + (tick % 7) as f64);
        for (o, secs) in [
            (Outcome::Succeeded, 40.0),
            (Outcome::Failed, 90.0),
            (Outcome::Stuck, 300.0),
        ] {
            m.jobs_finished.with_label_values(&[o.as_str()]).inc();
            m.job_duration
                .with_label_values(&[o.as_str()])
                .observe(secs + tick as f64);
        }
        m.agent_steps.inc_by(5);
        // Mostly errors, so FleetLlmErrors fires.
        for (o, n) in [("ok", 1), ("retried", 1), ("error", 3), ("rate_limited", 1)] {
            m.llm_requests.with_label_values(&[o]).inc_by(n);
        }
        m.llm_request_duration.observe(1.5);
        m.llm_tokens.with_label_values(&["prompt"]).inc_by(1200);
        m.llm_tokens.with_label_values(&["completion"]).inc_by(80);
        m.llm_cost.inc_by(0.0048);
        m.llm_retries.inc();
        m.tool_call("terminal", true);
        m.tool_call("file_editor", false);
        m.stuck_detections.with_label_values(&["monologue"]).inc();
        m.workspace_start.observe(0.8);
        m.job_retries.with_label_values(&["llm"]).inc();
        m.queue_messages
            .with_label_values(&["fleet.jobs"])
            .set(tick as f64);
        store
            .put("probe/tick", Bytes::from(vec![b'x'; 512]))
            .await
            .unwrap();
        if tick % 3 == 0 {
            for path in ["ok", "bad", "flaky"] {
                let spec = job_spec(
                    &format!("{path}-{tick}"),
                    &format!("http://{receiver}/{path}"),
                );
                notifier.job_finished(&spec, &result(&spec));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => {}
        }
    }
    notifier.shutdown(Duration::from_secs(2)).await;
}

fn job_spec(id: &str, url: &str) -> job::JobSpec {
    let v = json!({"id": id, "task": "t", "image": "img", "webhook": {"url": url}});
    job::job_from_value(v, &job::ParseOptions::default()).unwrap()
}

fn result(spec: &job::JobSpec) -> JobResult {
    let now = Utc::now();
    JobResult {
        job_id: spec.id.clone(),
        outcome: Outcome::Succeeded,
        attempt: 1,
        final_message: Some("done".into()),
        steps: 3,
        cost_usd: 0.01,
        tokens: Tokens {
            prompt: 10,
            completion: 2,
            ..Tokens::default()
        },
        duration_secs: 1.0,
        stuck_pattern: None,
        error: None,
        started_at: now,
        finished_at: now,
        worker: None,
        patch_complete: true,
    }
}

/// A webhook receiver: /ok accepts, /bad refuses (400), /flaky fails every other
/// request (503) so each of its deliveries is retried once.
async fn start_receiver() -> SocketAddr {
    async fn ok() -> StatusCode {
        StatusCode::OK
    }
    async fn bad() -> StatusCode {
        StatusCode::BAD_REQUEST
    }
    async fn flaky(State(n): State<Arc<AtomicU64>>) -> StatusCode {
        if n.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
    let app = axum::Router::new()
        .route("/ok", axum::routing::post(ok))
        .route("/bad", axum::routing::post(bad))
        .route("/flaky", axum::routing::post(flaky))
        .with_state(Arc::new(AtomicU64::new(0)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rule_files() -> Vec<PathBuf> {
    let dir = repo().join("deploy/prometheus/rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Rules as written in the files (`- record:` / `- alert:` items), to check that
/// Prometheus loaded every one.
fn declared_rule_count() -> usize {
    rule_files()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .flat_map(|t| {
            t.lines()
                .map(str::trim_start)
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("- record:") || l.starts_with("- alert:"))
        .count()
}

/// Every PromQL expression of the dashboard (panel targets and variable queries),
/// with Grafana's variables replaced by what Grafana would send.
fn dashboard_expressions() -> Vec<String> {
    let path = repo().join("deploy/grafana/fleet.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    let mut raw = Vec::new();
    collect_exprs(&dash, &mut raw);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .expect("a variable query");
            raw.push(q.to_string());
        }
    }
    raw.into_iter().map(|e| grafana_to_promql(&e)).collect()
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

fn grafana_to_promql(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$instance", ".*");
    // label_values(metric, label) is Grafana's, not PromQL: query the metric.
    if let Some(inner) = e
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
    {
        e = inner
            .rsplit_once(',')
            .map(|(m, _)| m.trim().to_string())
            .unwrap_or_default();
    }
    assert!(!e.contains('$'), "unhandled Grafana variable in {expr:?}");
    e
}

struct Rule {
    name: String,
    kind: String,
    query: String,
    health: String,
    last_error: String,
}

/// A `prometheus` process of this test; killed (by its handle) on every path.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` as job="fleet-worker" every second, with the rules of
    /// deploy/prometheus/rules evaluated every second.
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/rules/*.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: fleet-worker\n    static_configs:\n      - targets: [\"{target}\"]\n",
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({e}); install it with scripts/services/prometheus.sh"
                )
            });
        let mut p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            client: http(),
        };
        p.wait_ready().await;
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = self
                .client
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the fleet-worker job was scraped `n` times.
    async fn wait_for_scrapes(&self, n: u32) {
        let q = format!("count_over_time(up{{job=\"fleet-worker\"}}[5m]) >= {n}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(self.query(&q).await, Ok(r) if !r.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} scrapes within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The instant query's result, or Prometheus's error.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let r = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await;
        let body: Value = r
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(match &body["data"]["result"] {
            Value::Array(a)
                if body["data"]["resultType"] == "scalar"
                    || body["data"]["resultType"] == "string" =>
            {
                vec![Value::Array(a.clone())]
            }
            Value::Array(a) => a.clone(),
            _ => Vec::new(),
        })
    }

    /// True once `expr` returns a non-empty result within `patience` (rates and
    /// rules need samples to accumulate). An invalid query fails the test.
    async fn returns_data(&self, expr: &str, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            match self.query(expr).await {
                Ok(r) if !r.is_empty() => return true,
                Ok(_) => {}
                Err(e) if e.contains("bad_data") => panic!("invalid PromQL {expr:?}: {e}"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every loaded rule, once each has been evaluated.
    async fn rules(&self) -> Vec<Rule> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body: Value = self
                .client
                .get(format!("{}/api/v1/rules", self.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut rules = Vec::new();
            let mut evaluated = true;
            for g in body["data"]["groups"].as_array().into_iter().flatten() {
                for r in g["rules"].as_array().into_iter().flatten() {
                    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                    evaluated &= !s("lastEvaluation").starts_with("0001-");
                    rules.push(Rule {
                        name: s("name"),
                        kind: s("type"),
                        query: s("query"),
                        health: s("health"),
                        last_error: s("lastError"),
                    });
                }
            }
            if evaluated && !rules.is_empty() {
                return rules;
            }
            assert!(
                Instant::now() < deadline,
                "rules not evaluated within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[test]
fn grafana_variables_become_promql() {
    assert_eq!(
        grafana_to_promql("label_values(fleet_worker_up, instance)"),
        "fleet_worker_up"
    );
    assert_eq!(
        grafana_to_promql("sum(rate(x{instance=~\"$instance\"}[$__rate_interval]))"),
        "sum(rate(x{instance=~\".*\"}[1m]))"
    );
}
